#!/usr/bin/env bash
# Secure mode of the local broker (KAFKA_SECURE=1 dev/kafka/kafka.sh start): a CA, a broker
# certificate and a client certificate made here with openssl (nothing downloaded), and the
# listener settings kafka.sh appends to server.properties:
#
#   PORT       PLAINTEXT   for the broker's own use and Kafka's tools (principal ANONYMOUS)
#   PORT+2     SASL_SSL    SCRAM-SHA-256/512 over TLS
#   PORT+3     SSL         mutual TLS (client certificate required)
#   PORT+4     SASL_PLAINTEXT  SCRAM-SHA-256/512 without TLS (tests of protocol mismatches)
#
# Users are created at format time (SCRAM): admin and replica are super users; "limited" and
# "writer" have no ACLs, so the StandardAuthorizer refuses them every topic and group (tests
# grant them some, for ACL refusals). Passwords are "<user>-secret" — a local test broker, never a real one.
#
#   dev/kafka/secure.sh certs DIR        create DIR/{ca,broker,client}.{pem,key} (idempotent)
#   dev/kafka/secure.sh properties DIR HOST PORT
#   dev/kafka/secure.sh scram-args       arguments for `kafka-storage format`
set -euo pipefail

USERS=(admin replica limited writer)

die() { echo "kafka-secure: error: $*" >&2; exit 1; }

certs() {
  local dir=$1
  command -v openssl >/dev/null 2>&1 || die "openssl not found (needed for the secure broker)"
  mkdir -p "$dir"
  [ -s "$dir/client.pem" ] && return 0
  local days=3650 subj="/O=stream-replica local test"
  openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "$subj/CN=local test CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" >/dev/null 2>&1 || die "CA generation failed"
  for name in broker client; do
    openssl req -newkey rsa:2048 -nodes -subj "$subj/CN=$name" \
      -keyout "$dir/$name.key" -out "$dir/$name.csr" >/dev/null 2>&1 || die "$name key failed"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' \
      >"$dir/$name.ext"
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
      -CAcreateserial -days "$days" -extfile "$dir/$name.ext" -out "$dir/$name.pem" \
      >/dev/null 2>&1 || die "$name certificate failed"
    # Kafka's PEM key store wants the key in PKCS#8 form.
    openssl pkcs8 -topk8 -nocrypt -in "$dir/$name.key" -out "$dir/$name.pk8" \
      || die "$name key conversion failed"
    rm -f "$dir/$name.csr" "$dir/$name.ext"
  done
  # A second CA nobody trusts: for "untrusted certificate" tests.
  openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "$subj/CN=other CA" \
    -keyout "$dir/other-ca.key" -out "$dir/other-ca.pem" >/dev/null 2>&1 || die "other CA failed"
}

properties() {
  local dir=$1 host=$2 port=$3
  local sasl=$((port + 2)) tls=$((port + 3)) sasl_plain=$((port + 4))
  local elsewhere=$((port + 5)) moved=$((port + 6))
  cat <<EOF

# Secure mode (dev/kafka/secure.sh): SASL_SSL with SCRAM on $sasl, mutual TLS on $tls,
# SASL_PLAINTEXT with SCRAM on $sasl_plain; and two PLAINTEXT listeners advertised wrongly, as
# a misconfigured broker would be: $elsewhere under a name that does not resolve, $moved under
# a port nothing listens on ($((port + 7))).
listeners=PLAINTEXT://$host:$port,CONTROLLER://$host:$((port + 1)),SASL_SSL://$host:$sasl,SSL://$host:$tls,SASL_PLAINTEXT://$host:$sasl_plain,ELSEWHERE://$host:$elsewhere,MOVED://$host:$moved
advertised.listeners=PLAINTEXT://$host:$port,SASL_SSL://$host:$sasl,SSL://$host:$tls,SASL_PLAINTEXT://$host:$sasl_plain,ELSEWHERE://broker.invalid:$elsewhere,MOVED://$host:$((port + 7))
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,ELSEWHERE:PLAINTEXT,MOVED:PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location=$dir/broker.bundle.pem
ssl.truststore.type=PEM
ssl.truststore.location=$dir/ca.pem
listener.name.ssl.ssl.client.auth=required
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS;User:admin;User:replica;User:CN=client,O=stream-replica local test
EOF
  # A PEM key store file holds the private key and then the certificate chain.
  cat "$dir/broker.pk8" "$dir/broker.pem" >"$dir/broker.bundle.pem"
}

scram_args() {
  local user
  for user in "${USERS[@]}"; do
    printf -- "--add-scram\nSCRAM-SHA-256=[name=%s,password=%s-secret]\n" "$user" "$user"
    printf -- "--add-scram\nSCRAM-SHA-512=[name=%s,password=%s-secret]\n" "$user" "$user"
  done
}

case "${1:-}" in
  certs) certs "${2:?certs DIR}" ;;
  properties) properties "${2:?DIR}" "${3:?HOST}" "${4:?PORT}" ;;
  scram-args) scram_args ;;
  *) die "usage: secure.sh certs DIR | properties DIR HOST PORT | scram-args" ;;
esac
