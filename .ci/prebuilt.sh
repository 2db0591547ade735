# Sourced by .ci/gpu and .ci/gpu-flash-bias. unpack_prebuilt FILE: the programs packed by
# .ci/pack-gpu-binaries into build-gpu/, and the source and build paths compiled into them
# (prebuilt.txt) linked to this checkout and to build-gpu/ where they do not exist here.
# The packed system libraries (build-gpu/prebuilt-lib) for every program run after sourcing this.
export LD_LIBRARY_PATH="$PWD/build-gpu/prebuilt-lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unpack_prebuilt() {
  mkdir -p build-gpu && tar xJf "$1" -C build-gpu || { echo "cannot unpack $1"; return 1; }
  local src bld
  src=$(sed -n 's/^source=//p' build-gpu/prebuilt.txt)
  bld=$(sed -n 's/^build=//p' build-gpu/prebuilt.txt)
  if [ -n "$src" ] && [ ! -e "$src" ]; then mkdir -p "$(dirname "$src")" && ln -s "$PWD" "$src"; fi
  if [ -n "$bld" ] && [ ! -e "$bld" ]; then mkdir -p "$(dirname "$bld")" && ln -s "$PWD/build-gpu" "$bld"; fi
  echo "prebuilt: $1 (built from $src in $bld)"
}
