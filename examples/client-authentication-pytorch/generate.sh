#!/usr/bin/env bash
# Development credentials for this example, with OpenSSL and ssh-keygen:
#
#   certificates/  ca.crt, ca.key (a CA), server.pem, server.key (the SuperLink's TLS
#                  certificate, signed by the CA, for the names in certificate.conf)
#   keys/          server_credentials(.pub) (the SuperLink's key pair),
#                  client_credentials_N(.pub) (one key pair per SuperNode, ECDSA P-384),
#                  client_public_keys.csv (the allow-list: every client key on one line)
#
# The same layout as `pollen keys generate N`. Usage: ./generate.sh [--force] [NUMBER_OF_CLIENTS]
# (2 clients by default). Like `pollen keys generate`, it refuses to replace existing keys
# and certificates unless given --force (every node and SuperLink using them must then get
# the new ones). These keys are for development only: the CA key lies next to the
# certificates and no private key has a passphrase.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

force=0
clients=""
for arg in "$@"; do
    case "$arg" in
    --force) force=1 ;;
    -h | --help)
        echo "usage: ./generate.sh [--force] [NUMBER_OF_CLIENTS]  (2 clients by default;" \
            "--force replaces existing keys and certificates)"
        exit 0
        ;;
    -*)
        echo "error: unknown option '$arg'; usage: ./generate.sh [--force] [NUMBER_OF_CLIENTS]" >&2
        exit 2
        ;;
    *)
        if [[ -n "$clients" ]]; then
            echo "error: one number of clients, please (got '$clients' and '$arg'); e.g. ./generate.sh 5" >&2
            exit 2
        fi
        clients="$arg"
        ;;
    esac
done
clients="${clients:-2}"
if ! [[ "$clients" =~ ^[0-9]+$ ]] || ((10#$clients < 1)); then
    echo "error: the number of clients must be a whole number >= 1, got '$clients'; e.g. ./generate.sh 5" >&2
    exit 2
fi
clients=$((10#$clients))

# What this script writes (and, with --force, replaces), client keys of earlier runs included.
shopt -s nullglob
existing=(certificates/ca.crt certificates/ca.key certificates/server.pem certificates/server.key
    keys/server_credentials keys/server_credentials.pub keys/client_credentials_*
    keys/client_public_keys.csv)
shopt -u nullglob
present=()
for path in "${existing[@]}"; do
    [[ -e "$path" ]] && present+=("$path")
done
if ((${#present[@]} > 0 && !force)); then
    echo "error: ${present[0]} already exists (${#present[@]} files would be overwritten);" \
        "pass --force to replace them (./generate.sh --force $clients), or run it in a copy of" \
        "this folder" >&2
    exit 2
fi
for tool in openssl ssh-keygen; do
    if ! command -v "$tool" >/dev/null; then
        echo "error: $tool is not installed; install it (OpenSSL, OpenSSH client) or run: pollen keys generate $clients" >&2
        exit 2
    fi
done

# Run a command quietly; if it fails, show what it said and stop.
quietly() {
    local output
    if ! output=$("$@" 2>&1); then
        echo "error: $1 failed: ${output//$'\n'/ }" >&2
        exit 1
    fi
}

echo "warning: these keys and certificates are for development only; do not use them in production" >&2

mkdir -p certificates keys
# --force: replace what an earlier run wrote (ssh-keygen would otherwise ask before overwriting).
rm -f certificates/server.csr ${present[@]+"${present[@]}"}
umask 077  # private keys readable by their owner only

ec_key=(-newkey ec -pkeyopt ec_paramgen_curve:secp384r1 -nodes)
quietly openssl req -x509 "${ec_key[@]}" -days 365 -config certificate.conf \
    -extensions ca_extensions -subj "/O=Pollen development/CN=Pollen development CA" \
    -keyout certificates/ca.key -out certificates/ca.crt
quietly openssl req -new "${ec_key[@]}" -config certificate.conf \
    -keyout certificates/server.key -out certificates/server.csr
quietly openssl x509 -req -in certificates/server.csr -CA certificates/ca.crt \
    -CAkey certificates/ca.key -set_serial "0x$(openssl rand -hex 16)" -days 365 -sha384 \
    -extfile certificate.conf -extensions server_extensions -out certificates/server.pem
rm -f certificates/server.csr
chmod 644 certificates/ca.crt certificates/server.pem

quietly ssh-keygen -q -t ecdsa -b 384 -N "" -C "pollen-superlink" -f keys/server_credentials
for ((i = 1; i <= clients; i++)); do
    quietly ssh-keygen -q -t ecdsa -b 384 -N "" -C "pollen-client-$i" -f "keys/client_credentials_$i"
done
chmod 644 keys/*.pub

# The allow-list, as Flower's example writes it: all client public keys on one line, comma-separated.
for ((i = 1; i <= clients; i++)); do
    ((i > 1)) && printf ","
    tr -d '\n' <"keys/client_credentials_$i.pub"
done >keys/client_public_keys.csv
echo >>keys/client_public_keys.csv
chmod 644 keys/client_public_keys.csv

names=$(openssl x509 -noout -ext subjectAltName -in certificates/server.pem 2>/dev/null |
    tail -n +2 | sed -e 's/^ *//' -e 's/DNS://g' -e 's/IP Address://g' -e 's/0:0:0:0:0:0:0:1/::1/') || true
echo "wrote certificates/ (a CA; the SuperLink's certificate for ${names:-the names in certificate.conf})" \
    "and keys/ (the SuperLink's key pair, $clients client key pairs, client_public_keys.csv)"
