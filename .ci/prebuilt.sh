# Sourced by .ci/gpu, .ci/gpu-flash-bias and .ci/gpu-compare. unpack_prebuilt FILE [DIR]: the
# programs packed by .ci/pack-gpu-binaries into DIR (default build-gpu/), and the source and build
# paths compiled into them (prebuilt.txt) linked to this checkout and to DIR where they do not exist
# here. The packed system libraries (build-gpu/prebuilt-lib) for every program run after sourcing this.
export LD_LIBRARY_PATH="$PWD/build-gpu/prebuilt-lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unpack_prebuilt() {
  local dir=$PWD/${2:-build-gpu} src bld
  mkdir -p "$dir" && tar xJf "$1" -C "$dir" || { echo "cannot unpack $1"; return 1; }
  src=$(sed -n 's/^source=//p' "$dir/prebuilt.txt")
  bld=$(sed -n 's/^build=//p' "$dir/prebuilt.txt")
  if [ -n "$src" ] && [ ! -e "$src" ]; then mkdir -p "$(dirname "$src")" && ln -s "$PWD" "$src"; fi
  if [ -n "$bld" ] && [ ! -e "$bld" ]; then mkdir -p "$(dirname "$bld")" && ln -s "$dir" "$bld"; fi
  echo "prebuilt: $1 (built from $src in $bld)"
}
