#!/usr/bin/env bash
# Prints the Debian packages owning the shared libraries a binary links directly (its DT_NEEDED entries) and those
# that the bundled libraries (below) link directly, one a line, sorted: the runtime image's package list, derived from
# the binary the build stage made, so it cannot drift from what the binary links. apt brings those packages' own dependencies; a library that this machine's Debian
# alternatives choose (a link through /etc/alternatives anywhere in the dependency tree) is added by the package
# providing the chosen target, since apt alone might pick another provider.
# Usage: deploy/docker/runtime_packages.sh [--bundled DIR]... BINARY
#   --bundled DIR (repeatable): libraries under DIR travel with the binary, not looked up: LibTorch's, copied out of
#   the Python environment scripts/install_deps.sh makes (the CPU image's /opt/reel/lib; for a binary run in place,
#   the environment's site-packages folder). Any other library no Debian package owns is an error.
set -euo pipefail
bundled=()
while [ "${1:-}" = "--bundled" ]; do
  dir=${2:?"runtime_packages: --bundled needs a directory"}
  bundled+=("$(readlink -f "$dir")")
  shift 2
done
bin=${1:-}
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "runtime_packages: binary '${bin}': not an executable file; accepted the path of a built reel binary" >&2
  exit 2
fi
out=$(ldd "$bin") || { echo "runtime_packages: ldd $bin failed; accepted a dynamically linked ELF binary" >&2; exit 2; }
if grep -q "not found" <<<"$out"; then
  echo "runtime_packages: $bin: libraries not found: $(grep "not found" <<<"$out" | awk '{print $1}' | xargs)" >&2
  exit 1
fi
is_bundled() {
  local real b
  real=$(readlink -f "$1")
  for b in "${bundled[@]}"; do
    case "$real" in "$b"/*) return 0 ;; esac
  done
  return 1
}
needed_of() { LC_ALL=C readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
# The direct dependencies of the binary and of the bundled libraries it loads, located where the loader finds them
# ("name => /path (addr)" lines of ldd).
needed=$(needed_of "$bin")
while read -r l; do
  if is_bundled "$l"; then
    needed="$needed $(needed_of "$l")"
  fi
done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3}' <<<"$out")
libs=$(for n in $needed; do awk -v n="$n" '$1 == n && $2 == "=>" {print $3}' <<<"$out"; done | sort -u)
# Libraries loaded through /etc/alternatives, anywhere in the dependency tree: the package of the chosen target.
chosen=$(awk '$2 == "=>" && $3 ~ /^\// {print $3}' <<<"$out" | while read -r l; do
  case "$(readlink "$l")" in /etc/alternatives/*) readlink -f "$l" ;; esac
done | sort -u)
libs=$(printf '%s\n' $libs $chosen | sort -u)
if [ -z "$libs" ]; then
  echo "runtime_packages: $bin: no shared libraries found; accepted a dynamically linked ELF binary" >&2
  exit 1
fi
owner_of() {  # dpkg knows a file by the path its package ships: try the path, its target, and both /usr spellings
  local p cand
  for p in "$1" "$(readlink -f "$1")"; do
    for cand in "$p" "${p#/usr}" "/usr$p"; do
      if o=$(dpkg-query -S "$cand" 2>/dev/null); then
        head -n1 <<<"$o" | sed 's/: .*//; s/, /\n/g' | head -n1 | sed 's/:.*//'
        return 0
      fi
    done
  done
  return 1
}
for lib in $libs; do
  if is_bundled "$lib"; then
    continue
  fi
  owner_of "$lib" || { echo "runtime_packages: no Debian package owns $lib (loaded by $bin)" >&2; exit 1; }
done | sort -u
