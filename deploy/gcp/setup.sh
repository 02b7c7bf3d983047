#!/usr/bin/env bash
# The Google Cloud resources CareCast runs on, as gcloud commands: documented, run by an operator once per
# project (nothing in the test suite runs it). Read deploy/gcp/README.md first. Set the three variables,
# then run the sections one by one; each is idempotent only as far as gcloud is (re-running "create" fails).
set -euo pipefail

PROJECT_ID="${PROJECT_ID:?set PROJECT_ID}"
REGION="${REGION:-europe-west2}"
IMAGE="$REGION-docker.pkg.dev/$PROJECT_ID/carecast/carecast:0.1.0"
gcloud config set project "$PROJECT_ID"

# -- APIs, network, registry --------------------------------------------------------------------------------
gcloud services enable run.googleapis.com sqladmin.googleapis.com redis.googleapis.com cloudkms.googleapis.com \
    secretmanager.googleapis.com healthcare.googleapis.com pubsub.googleapis.com cloudscheduler.googleapis.com \
    artifactregistry.googleapis.com container.googleapis.com servicenetworking.googleapis.com
gcloud compute networks create carecast-vpc --subnet-mode=custom
gcloud compute networks subnets create carecast-run --network=carecast-vpc --region="$REGION" --range=10.20.0.0/24
gcloud compute addresses create carecast-services --global --purpose=VPC_PEERING --prefix-length=20 \
    --network=carecast-vpc
gcloud services vpc-peerings connect --service=servicenetworking.googleapis.com --ranges=carecast-services \
    --network=carecast-vpc
gcloud artifacts repositories create carecast --repository-format=docker --location="$REGION"
# The image (on a machine with Docker; LOCK_FILE names a lock that includes google-cloud-kms, see the README):
#   docker build --build-arg LOCK_FILE=requirements/gcp.lock -t "$IMAGE" . && docker push "$IMAGE"

# -- service accounts ---------------------------------------------------------------------------------------
for sa in carecast-api carecast-jobs carecast-gke carecast-relay carecast-scheduler; do
    gcloud iam service-accounts create "$sa"
done
sa() { echo "$1@$PROJECT_ID.iam.gserviceaccount.com"; }

# -- Cloud KMS: the key that wraps the data key (envelope encryption) ----------------------------------------
gcloud kms keyrings create carecast --location="$REGION"
gcloud kms keys create data-key --keyring=carecast --location="$REGION" --purpose=encryption \
    --rotation-period=90d --next-rotation-time="$(date -u -d '+90 days' +%Y-%m-%dT%H:%M:%SZ)"
for who in carecast-api carecast-jobs carecast-gke; do
    gcloud kms keys add-iam-policy-binding data-key --keyring=carecast --location="$REGION" \
        --member="serviceAccount:$(sa "$who")" --role=roles/cloudkms.cryptoKeyDecrypter
done

# -- Secret Manager: the wrapped data key, the session key, the database and Redis URLs -----------------------
# The master key is made and wrapped here, in memory; only its KMS ciphertext is stored.
python3 -c 'import secrets, sys; sys.stdout.buffer.write(secrets.token_bytes(32))' \
  | gcloud kms encrypt --key=data-key --keyring=carecast --location="$REGION" \
        --plaintext-file=- --ciphertext-file=- \
  | base64 -w0 | gcloud secrets create carecast-data-key --data-file=-
python3 -c 'import secrets; print(secrets.token_urlsafe(48), end="")' \
  | gcloud secrets create carecast-session-key --data-file=-

# -- Cloud SQL for PostgreSQL (private IP, IAM database authentication, backups with PITR) -------------------
gcloud sql instances create carecast-pg --database-version=POSTGRES_16 --region="$REGION" --tier=db-custom-2-7680 \
    --availability-type=REGIONAL --network=carecast-vpc --no-assign-ip --enable-google-private-path \
    --database-flags=cloudsql.iam_authentication=on --backup-start-time=02:00 --enable-point-in-time-recovery \
    --retained-backups-count=30 --require-ssl
gcloud sql databases create carecast --instance=carecast-pg
DB_PASSWORD="$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
gcloud sql users create carecast --instance=carecast-pg --password="$DB_PASSWORD"   # Cloud Run (socket)
gcloud sql users create "carecast-gke@$PROJECT_ID.iam" --instance=carecast-pg --type=cloud_iam_service_account
printf 'postgresql+psycopg://carecast:%s@/carecast?host=/cloudsql/%s:%s:carecast-pg' \
    "$DB_PASSWORD" "$PROJECT_ID" "$REGION" | gcloud secrets create carecast-database-url --data-file=-
unset DB_PASSWORD
# Then, as the carecast user: GRANT ALL ON DATABASE carecast TO "carecast-gke@PROJECT_ID.iam"; and on its schema.
for who in carecast-api carecast-jobs carecast-gke; do
    gcloud projects add-iam-policy-binding "$PROJECT_ID" --member="serviceAccount:$(sa "$who")" \
        --role=roles/cloudsql.client
done
gcloud projects add-iam-policy-binding "$PROJECT_ID" --member="serviceAccount:$(sa carecast-gke)" \
    --role=roles/cloudsql.instanceUser

# -- Memorystore for Redis (AUTH and in-transit encryption) ---------------------------------------------------
gcloud redis instances create carecast-redis --region="$REGION" --tier=standard --size=1 --redis-version=redis_7_2 \
    --network=carecast-vpc --connect-mode=private-service-access --enable-auth \
    --transit-encryption-mode=server-authentication
REDIS_HOST="$(gcloud redis instances describe carecast-redis --region="$REGION" --format='value(host)')"
REDIS_AUTH="$(gcloud redis instances get-auth-string carecast-redis --region="$REGION" --format='value(authString)')"
gcloud redis instances describe carecast-redis --region="$REGION" --format='value(serverCaCerts[0].cert)' \
  | gcloud secrets create carecast-memorystore-ca --data-file=-
# Cloud Run mounts the CA at /etc/memorystore, GKE at /var/run/secrets/carecast; this URL is Cloud Run's.
printf 'rediss://:%s@%s:6378/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/memorystore/server-ca.pem' \
    "$REDIS_AUTH" "$REDIS_HOST" | gcloud secrets create carecast-redis-url --data-file=-
unset REDIS_AUTH

for secret in carecast-data-key carecast-session-key carecast-database-url carecast-redis-url carecast-memorystore-ca; do
    for who in carecast-api carecast-jobs carecast-gke; do
        gcloud secrets add-iam-policy-binding "$secret" --member="serviceAccount:$(sa "$who")" \
            --role=roles/secretmanager.secretAccessor
    done
done

# -- the model registry bucket (Cloud Storage FUSE in Cloud Run and GKE) ------------------------------------
gcloud storage buckets create "gs://$PROJECT_ID-carecast-models" --location="$REGION" \
    --uniform-bucket-level-access --public-access-prevention
gcloud storage buckets update "gs://$PROJECT_ID-carecast-models" --versioning
for who in carecast-api carecast-jobs carecast-gke; do
    gcloud storage buckets add-iam-policy-binding "gs://$PROJECT_ID-carecast-models" \
        --member="serviceAccount:$(sa "$who")" --role=roles/storage.objectUser
done

# -- Cloud Run: the migrations job, the API, the retrain job and its nightly schedule -------------------------
for f in cloudrun/service.yaml cloudrun/migrate-job.yaml cloudrun/retrain-job.yaml; do
    sed -e "s/PROJECT_ID/$PROJECT_ID/g" -e "s/REGION/$REGION/g" "deploy/gcp/$f" > "/tmp/carecast-$(basename "$f")"
done
gcloud run jobs replace /tmp/carecast-migrate-job.yaml --region="$REGION"
gcloud run jobs execute carecast-migrate --region="$REGION" --wait
gcloud run services replace /tmp/carecast-service.yaml --region="$REGION"
gcloud run jobs replace /tmp/carecast-retrain-job.yaml --region="$REGION"
gcloud run jobs add-iam-policy-binding carecast-retrain --region="$REGION" \
    --member="serviceAccount:$(sa carecast-scheduler)" --role=roles/run.invoker
gcloud scheduler jobs create http carecast-retrain-nightly --location="$REGION" --schedule="30 3 * * *" \
    --time-zone=Etc/UTC --http-method=POST \
    --uri="https://run.googleapis.com/v2/projects/$PROJECT_ID/locations/$REGION/jobs/carecast-retrain:run" \
    --oauth-service-account-email="$(sa carecast-scheduler)"

# -- Cloud Healthcare API FHIR store -> Pub/Sub -> relay -> POST /api/v1/ingest/fhir -----------------------
gcloud healthcare datasets create carecast --location="$REGION"
gcloud pubsub topics create carecast-fhir
gcloud pubsub topics create carecast-fhir-dead   # messages that failed 20 deliveries, for inspection
gcloud pubsub topics add-iam-policy-binding carecast-fhir --role=roles/pubsub.publisher \
    --member="serviceAccount:service-$(gcloud projects describe "$PROJECT_ID" --format='value(projectNumber)')@gcp-sa-healthcare.iam.gserviceaccount.com"
cat > /tmp/carecast-fhir-notifications.json <<JSON
[{"pubsubTopic": "projects/$PROJECT_ID/topics/carecast-fhir", "sendFullResource": true,
  "sendPreviousResourceOnDelete": false}]
JSON
gcloud healthcare fhir-stores create carecast-fhir --dataset=carecast --location="$REGION" --version=R4 \
    --enable-update-create
curl -sf -X PATCH -H "Authorization: Bearer $(gcloud auth print-access-token)" -H "Content-Type: application/json" \
    "https://healthcare.googleapis.com/v1/projects/$PROJECT_ID/locations/$REGION/datasets/carecast/fhirStores/carecast-fhir?updateMask=notificationConfigs" \
    -d "{\"notificationConfigs\": $(cat /tmp/carecast-fhir-notifications.json)}"
# The relay's token: a CareCast user whose token carries ingest:write only, e.g. (from a migrated instance)
#   carecast users create fhir-relay --role nurse && carecast tokens issue fhir-relay --name fhir-relay \
#       --scope ingest:write --hours 8760 | gcloud secrets create carecast-ingest-token --data-file=-
gcloud secrets add-iam-policy-binding carecast-ingest-token --member="serviceAccount:$(sa carecast-relay)" \
    --role=roles/secretmanager.secretAccessor
API_URL="$(gcloud run services describe carecast-api --region="$REGION" --format='value(status.url)')"
gcloud run deploy carecast-fhir-relay --source=deploy/gcp/relay --region="$REGION" --no-allow-unauthenticated \
    --service-account="$(sa carecast-relay)" --ingress=internal --set-env-vars="CARECAST_API_URL=$API_URL" \
    --set-secrets=CARECAST_INGEST_TOKEN=carecast-ingest-token:latest --network=carecast-vpc \
    --subnet=carecast-run --vpc-egress=all-traffic
gcloud run services add-iam-policy-binding carecast-fhir-relay --region="$REGION" \
    --member="serviceAccount:$(sa carecast-relay)" --role=roles/run.invoker
RELAY_URL="$(gcloud run services describe carecast-fhir-relay --region="$REGION" --format='value(status.url)')"
gcloud pubsub subscriptions create carecast-fhir-push --topic=carecast-fhir --push-endpoint="$RELAY_URL/" \
    --push-auth-service-account="$(sa carecast-relay)" --ack-deadline=60 \
    --min-retry-delay=10s --max-retry-delay=600s --dead-letter-topic=carecast-fhir-dead --max-delivery-attempts=20

# -- GKE (alternative to Cloud Run for the API and workers) ------------------------------------------------
# gcloud container clusters create-auto carecast --region="$REGION" --network=carecast-vpc
#   (Autopilot: Workload Identity, Dataplane V2 network policies, Cloud Storage FUSE CSI and Cloud Logging on)
# Secrets Store CSI driver + its Google provider: see the README. Then:
# gcloud iam service-accounts add-iam-policy-binding "$(sa carecast-gke)" --role=roles/iam.workloadIdentityUser \
#     --member="serviceAccount:$PROJECT_ID.svc.id.goog[carecast/carecast]"
# sed -e "s/PROJECT_ID/$PROJECT_ID/g" -e "s/REGION/$REGION/g" -i deploy/gcp/gke/*.yaml && kubectl apply -k deploy/gcp/gke
