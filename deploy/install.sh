#!/bin/sh
# Installs ringcast as a systemd service:
#   the binary         -> $ROOT/usr/local/bin/ringcast              (0755, replaced)
#   the unit           -> $ROOT/etc/systemd/system/ringcast.service (0644, replaced)
#   an example config  -> $ROOT/etc/ringcast/ringcast.toml          (0640, only if absent)
# and, as root on the running system, the `ringcast` system user and a daemon-reload.
# Safe to run again: an existing configuration is never overwritten.
#
# Usage: deploy/install.sh [--root DIR] [--binary PATH] [--no-user] [--no-systemd]
set -eu

usage() {
    cat <<'EOF'
Usage: deploy/install.sh [OPTIONS]

Installs the ringcast binary, its systemd unit and (if none exists) an example
configuration.

Options:
  --root DIR      install under DIR instead of / (for packaging and tests)
  --binary PATH   the ringcast binary to install (default: target/release/ringcast,
                  built with `cargo build --release`)
  --no-user       do not create the ringcast system user
  --no-systemd    do not run `systemctl daemon-reload`
  -h, --help      print this help
EOF
}

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}

note() {
    echo "install.sh: $*"
}

# The repository this script belongs to: deploy/..
script_dir=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
repo_dir=$(dirname -- "$script_dir")

root=/
binary="$repo_dir/target/release/ringcast"
create_user=yes
reload_systemd=yes

while [ $# -gt 0 ]; do
    case $1 in
        --root)
            [ $# -ge 2 ] || die "--root needs a directory"
            root=$2
            shift 2
            ;;
        --root=*)
            root=${1#--root=}
            shift
            ;;
        --binary)
            [ $# -ge 2 ] || die "--binary needs a path"
            binary=$2
            shift 2
            ;;
        --binary=*)
            binary=${1#--binary=}
            shift
            ;;
        --no-user)
            create_user=no
            shift
            ;;
        --no-systemd)
            reload_systemd=no
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            die "unknown option: $1"
            ;;
    esac
done

[ -n "$root" ] || die "--root must not be empty"
# A bare name would be looked up in PATH when run below; make it a path.
case $binary in
    */*) ;;
    *) binary="./$binary" ;;
esac
if [ ! -f "$binary" ] || [ ! -x "$binary" ]; then
    die "ringcast binary not found or not executable: $binary
  Build it first with:  cargo build --release
  or name it with:      --binary PATH"
fi
[ -f "$script_dir/ringcast.service" ] || die "missing $script_dir/ringcast.service"
[ -f "$script_dir/ringcast.toml.example" ] || die "missing $script_dir/ringcast.toml.example"

# Paths under the root, without a doubled slash for the default root.
prefix=${root%/}
bin_path="$prefix/usr/local/bin/ringcast"
unit_path="$prefix/etc/systemd/system/ringcast.service"
config_dir="$prefix/etc/ringcast"
config_path="$config_dir/ringcast.toml"

is_root=no
[ "$(id -u)" -eq 0 ] && is_root=yes
on_live_system=no
[ -z "$prefix" ] && on_live_system=yes

mkdir -p "$prefix/usr/local/bin" "$prefix/etc/systemd/system"
if [ ! -d "$config_dir" ]; then
    mkdir -p "$config_dir"
    chmod 0755 "$config_dir"
fi

# Copy to a temporary name and rename over the target: a running ringcast keeps its old
# executable, and nobody ever sees a half-written file.
install_file() { # source, target, mode
    cp -- "$1" "$2.tmp.$$"
    chmod "$3" "$2.tmp.$$"
    mv -f -- "$2.tmp.$$" "$2"
}

install_file "$binary" "$bin_path" 0755
note "installed $bin_path"
install_file "$script_dir/ringcast.service" "$unit_path" 0644
note "installed $unit_path"

# The system user the unit runs as.
if [ "$create_user" = no ]; then
    note "not creating the ringcast user (--no-user)"
elif [ "$is_root" = no ]; then
    note "not creating the ringcast user: not running as root"
elif [ "$on_live_system" = no ]; then
    note "not creating the ringcast user: installing under --root $root (create it on the target system)"
elif id ringcast >/dev/null 2>&1; then
    note "user ringcast exists"
else
    nologin=/usr/sbin/nologin
    [ -x "$nologin" ] || nologin=/sbin/nologin
    [ -x "$nologin" ] || nologin=/bin/false
    if command -v useradd >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --home-dir / \
            --shell "$nologin" --comment "ringcast server" ringcast
    elif command -v adduser >/dev/null 2>&1 && command -v addgroup >/dev/null 2>&1; then
        # BusyBox (Alpine)
        addgroup -S ringcast
        adduser -S -D -H -h / -s "$nologin" -G ringcast -g "ringcast server" ringcast
    else
        die "cannot create the ringcast user: neither useradd nor adduser is available"
    fi
    note "created system user ringcast"
fi

# The configuration: never overwrite an operator's file.
config_created=no
if [ -e "$config_path" ]; then
    note "kept the existing $config_path"
else
    tmp="$config_path.tmp.$$"
    # It will hold secrets: never readable by others, not even for a moment.
    old_umask=$(umask)
    umask 077
    # The binary prints the reference example when it knows the `config example` command;
    # an older binary refuses it, and the example beside this script is used instead.
    runner=
    command -v timeout >/dev/null 2>&1 && runner="timeout 10"
    if $runner "$binary" config example >"$tmp" 2>/dev/null && [ -s "$tmp" ]; then
        source="ringcast config example"
    else
        cp -- "$script_dir/ringcast.toml.example" "$tmp"
        source="deploy/ringcast.toml.example"
    fi
    umask "$old_umask"
    chmod 0640 "$tmp"
    mv -f -- "$tmp" "$config_path"
    config_created=yes
    note "installed $config_path (from $source)"
fi

# The service reads its configuration as group ringcast; the files stay root's.
if [ "$is_root" = yes ] && [ "$on_live_system" = yes ] && id ringcast >/dev/null 2>&1; then
    if [ "$config_created" = yes ]; then
        chown root:ringcast "$config_path"
    fi
elif [ "$is_root" = yes ] && [ "$on_live_system" = yes ] && [ "$config_created" = yes ]; then
    note "warning: no ringcast user yet; once it exists, run: chown root:ringcast $config_path"
fi

if [ "$reload_systemd" = no ]; then
    note "not running systemctl daemon-reload (--no-systemd)"
elif [ "$on_live_system" = no ]; then
    note "not running systemctl daemon-reload: installing under --root $root"
elif [ ! -d /run/systemd/system ] || ! command -v systemctl >/dev/null 2>&1; then
    note "not running systemctl daemon-reload: systemd is not running here"
else
    systemctl daemon-reload
    note "ran systemctl daemon-reload"
fi

cat <<EOF

Next steps:
  1. Edit $config_path: replace every CHANGE-ME value (make secrets with
     'openssl rand -hex 32'; ringcast refuses to start with a placeholder), and set
     host, port and the apps you need. RINGCAST_* variables can also go in
     $prefix/etc/ringcast/ringcast.env.
     Validate it:                 /usr/local/bin/ringcast config check $config_path
  2. Start it now and at boot:   systemctl enable --now ringcast
  3. Check the IO backend:       journalctl -u ringcast | grep 'IO backend'
     Check readiness:            curl -fsS http://127.0.0.1:6001/readyz
     Check metrics:              curl -fsS http://127.0.0.1:9601/metrics | head
  4. Kernel and proxy tuning for many connections: docs/deployment.md
EOF
