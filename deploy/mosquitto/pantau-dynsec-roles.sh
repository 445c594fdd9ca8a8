#!/bin/sh
# Creates, in a Mosquitto with the dynamic-security plugin, the accounts
# Pantau's own processes use (gateways are provisioned by Pantau itself,
# through `pantau gateway add --broker-admin …` or the admin API):
#
#   pantau-ingest  ingest workers: the shared telemetry subscription, and
#                  publishing each commit to pantau/v1/committed/WORKER;
#   pantau-api     API replicas: the commits of every worker.
#
# Run once per broker cluster, as the dynsec admin, over TLS off loopback:
#
#   MOSQUITTO_CTRL="mosquitto_ctrl -h broker.example -p 8883 --cafile ca.pem -u admin -P …" \
#   INGEST_PASSWORD=… API_PASSWORD=… deploy/mosquitto/pantau-dynsec-roles.sh
#
# Idempotent for the roles; an account that exists keeps its password.
set -eu
: "${MOSQUITTO_CTRL:?set MOSQUITTO_CTRL to the mosquitto_ctrl command with connection options}"
: "${INGEST_PASSWORD:?set INGEST_PASSWORD}"
: "${API_PASSWORD:?set API_PASSWORD}"

ctrl() {
  # mosquitto_ctrl prints the plugin's error and exits non-zero; an object
  # that already exists is what was asked for.
  out=$($MOSQUITTO_CTRL dynsec "$@" 2>&1) || case "$out" in
    *"already exists"*) ;;
    *) echo "$out" >&2; exit 1 ;;
  esac
}

ctrl createRole pantau-ingest
ctrl addRoleACL pantau-ingest subscribePattern '$share/pantau-ingest/pantau/v1/gw/+/telemetry' allow 0
ctrl addRoleACL pantau-ingest subscribePattern 'pantau/v1/gw/+/telemetry' allow 0
ctrl addRoleACL pantau-ingest publishClientReceive 'pantau/v1/gw/+/telemetry' allow 0
ctrl addRoleACL pantau-ingest publishClientSend 'pantau/v1/committed/#' allow 0

ctrl createRole pantau-api
ctrl addRoleACL pantau-api subscribePattern 'pantau/v1/committed/+' allow 0
ctrl addRoleACL pantau-api publishClientReceive 'pantau/v1/committed/#' allow 0

ctrl createClient pantau-ingest -p "$INGEST_PASSWORD"
ctrl addClientRole pantau-ingest pantau-ingest 0
ctrl createClient pantau-api -p "$API_PASSWORD"
ctrl addClientRole pantau-api pantau-api 0
echo "pantau-ingest and pantau-api are ready."
