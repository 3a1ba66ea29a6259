#!/usr/bin/env bash
# Installs the container runtimes and tools that the client tests (clients/,
# `make test-clients`) drive plumb's plugins with, only when missing:
#   podman (CNI backend), runc, conmon, containerd, busybox-static   from Debian
#   cnitool, crictl                                                   with go install, pinned
# It runs before the tests, in the machine's own namespaces: apt and the Go
# module proxy are reachable only from there. It installs packages and
# nothing else: no service is started (Debian's policy-rc.d answer is forced
# for the install), no link, address, route, sysctl or rule is created.
#
# A client that cannot be installed is reported and left out; the tests
# skip it and say so. The script never fails the build.
set -uo pipefail

CNITOOL_VERSION=${CNITOOL_VERSION:-v1.3.1} # module github.com/containernetworking/cni
CRICTL_VERSION=${CRICTL_VERSION:-v1.34.0}  # module sigs.k8s.io/cri-tools
GOBIN=${CLIENTS_GOBIN:-/usr/local/bin}     # on every PATH, where the README tells users to look
GO=${GO:-go}

if [ "$(id -u)" != 0 ]; then
  echo "clients-setup: not root, installing nothing (the client tests need root and skip without it)" >&2
  exit 0
fi

# Debian packages, by the command each one provides.
need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v conmon >/dev/null 2>&1 || need+=(conmon)
command -v containerd >/dev/null 2>&1 || need+=(containerd)
[ -x /bin/busybox ] || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  echo "clients-setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Never start a service from a package's postinst: containerd must only
  # ever run inside a test's throwaway namespace.
  policy=/usr/sbin/policy-rc.d
  restore=
  if [ ! -e "$policy" ] || ! grep -q 'exit 101' "$policy"; then
    if [ -e "$policy" ]; then
      cp -p "$policy" "$policy.clients-setup" && restore=move
    else
      restore=remove
    fi
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
  fi
  apt-get update -qq || true
  # runc named explicitly: podman depends on "crun | runc", and crun refuses
  # the mixed cgroup v1/v2 layout of these machines.
  apt-get install -y -qq --no-install-recommends "${need[@]}" ||
    echo "clients-setup: apt-get install ${need[*]} failed; the tests of those clients will skip" >&2
  case $restore in
    move) mv -f "$policy.clients-setup" "$policy" ;;
    remove) rm -f "$policy" ;;
  esac
fi

# Go tools at pinned versions (the module proxy is reachable from here only).
goinstall() { # name module@version
  if command -v "$1" >/dev/null 2>&1 || [ -x "$GOBIN/$1" ]; then
    return
  fi
  echo "clients-setup: go install $2"
  GOBIN=$GOBIN CGO_ENABLED=0 "$GO" install "$2" ||
    echo "clients-setup: go install $2 failed; the tests that need $1 will skip" >&2
}
goinstall cnitool "github.com/containernetworking/cni/cnitool@$CNITOOL_VERSION"
goinstall crictl "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
exit 0
