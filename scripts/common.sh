# Shared steps of scripts/quickstart and scripts/run-tests. Sourced, not run.
# Set APBD_VENV to choose the virtual environment (default: REPO/.venv).

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
APBD_VENV="${APBD_VENV:-$REPO_DIR/.venv}"
BUILD_USER="${APB_BUILD_USER:-apbd-build}"

# shellcheck source=deps
source "$REPO_DIR/scripts/deps"

say() {
  printf '==> %s\n' "$*"
}

die() {
  printf '==> ERROR: %s\n' "$*" >&2
  exit 1
}

# Re-run the calling script as root through sudo when needed.
# Print the comment block at the top of the calling script and exit, for -h/--help.
show_help_if_asked() {
  local arg
  for arg in "$@"; do
    if [[ $arg == -h || $arg == --help ]]; then
      sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
      exit 0
    fi
  done
}

require_root() {
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "run this script as root (sudo is not installed)"
    say "root is needed to install packages and start builds as $BUILD_USER: re-running with sudo"
    exec sudo --preserve-env=APBD_VENV,APBD_QUICKSTART_DIR,CI "$0" "$@"
  fi
}

detect_distro() {
  if command -v apt-get >/dev/null; then
    echo debian
  elif command -v pacman >/dev/null && [[ -f /etc/arch-release ]]; then
    echo arch
  else
    die "unsupported system: apbd's scripts know Debian (apt-get) and Arch Linux (pacman)"
  fi
}

# Install the system packages of the given kinds (runtime, test): the lists
# APT_RUNTIME, APT_TEST or PACMAN_RUNTIME, PACMAN_TEST of scripts/deps.
install_system_packages() {
  local distro prefix kind name missing=() all=()
  distro=$(detect_distro)
  prefix=APT_
  [[ $distro == arch ]] && prefix=PACMAN_
  for kind in "$@"; do
    local -n names="$prefix${kind^^}"
    all+=("${names[@]}")
    unset -n names
  done
  [[ ${#all[@]} -gt 0 ]] || return 0
  case $distro in
  debian)
    for name in "${all[@]}"; do
      dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q "install ok installed" || missing+=("$name")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
      say "Debian packages already installed: ${all[*]}"
      return 0
    fi
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    ;;
  arch)
    say "installing Arch packages that are missing from: ${all[*]}"
    pacman -S --needed --noconfirm "${all[@]}"
    ;;
  esac
}

# The unprivileged user that runs makepkg: a system user without a home or login.
create_build_user() {
  if id "$BUILD_USER" >/dev/null 2>&1; then
    say "build user $BUILD_USER exists"
    return 0
  fi
  say "creating build user $BUILD_USER"
  local nologin=/usr/sbin/nologin
  [[ -x $nologin ]] || nologin=/usr/bin/nologin
  useradd --system --no-create-home --home-dir /nonexistent --shell "$nologin" --user-group "$BUILD_USER"
}

# Create the virtual environment (Debian 12's pip rejects system-wide
# installs) and install apbd into it, editable, with the given extras.
install_python_package() {
  local extras="$1" spec="$REPO_DIR"
  [[ -n $extras ]] && spec="$REPO_DIR[$extras]"
  local python=python3
  [[ -x /usr/bin/python3 ]] && python=/usr/bin/python3
  if [[ ! -x $APBD_VENV/bin/python ]]; then
    say "creating virtual environment $APBD_VENV"
    "$python" -m venv "$APBD_VENV"
  fi
  say "installing apbd${extras:+ [$extras]} into $APBD_VENV"
  "$APBD_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --editable "$spec"
}
