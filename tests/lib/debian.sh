# shellcheck shell=bash
# Sourced by the test scripts: installs the Debian packages given that are not installed yet
# (one `apt-get update` first, only when something is missing). Needs root.
install_missing_packages() {
  local missing=()
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Packages of Debian's newer suites (trixie, sid) for the tests, never installed: apt-get and
# apt-cache run with a state of their own under $NEWER_DEBIAN (the system's sources, lists
# and packages are untouched, so nothing can upgrade the system's libc), and packages are
# unpacked with dpkg-deb where the caller says.
NEWER_DEBIAN=${CRIGUARD_NEWER_DEBIAN:-/var/lib/criguard-e2e/apt}

newer_apt() {
  local command=$1
  shift
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  mkdir -p "$NEWER_DEBIAN"/{state/lists/partial,cache/archives/partial,parts,download}
  printf 'deb [signed-by=%s] http://deb.debian.org/debian %s main\n' \
    "$keyring" trixie "$keyring" sid >"$NEWER_DEBIAN/sources.list"
  "$command" -q -o Dir::Etc::SourceList="$NEWER_DEBIAN/sources.list" \
    -o Dir::Etc::SourceParts="$NEWER_DEBIAN/parts" -o Dir::State="$NEWER_DEBIAN/state" \
    -o Dir::Cache="$NEWER_DEBIAN/cache" -o Dir::Etc::Preferences=/dev/null \
    -o Dir::Etc::PreferencesParts="$NEWER_DEBIAN/parts" -o APT::Sandbox::User=root "$@"
}

# The package lists, read again when older than a day.
newer_debian_update() {
  local stamp=$NEWER_DEBIAN/updated
  if [ -z "$(find "$stamp" -mmin -1440 2>/dev/null)" ]; then
    newer_apt apt-get update >/dev/null
    touch "$stamp"
  fi
}

# The version of package $1 in suite $2.
newer_debian_version() {
  newer_debian_update
  newer_apt apt-cache show "$1/$2" 2>/dev/null | awk '$1=="Version:"{print $2; exit}'
}

# Unpacks the packages given (name/suite or name=version) into directory $1.
newer_debian_unpack() {
  local into=$1 deb
  shift
  newer_debian_update
  rm -rf "$NEWER_DEBIAN/download" && mkdir -p "$NEWER_DEBIAN/download" "$into"
  ( cd "$NEWER_DEBIAN/download" && newer_apt apt-get download "$@" >/dev/null )
  for deb in "$NEWER_DEBIAN"/download/*.deb; do dpkg-deb -x "$deb" "$into"; done
}
