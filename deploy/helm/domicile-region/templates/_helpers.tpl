{{/* Names and labels. */}}
{{- define "domicile-region.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "domicile-region.fullname" -}}
{{- printf "%s-%s" .Release.Name .Values.region.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "domicile-region.selectorLabels" -}}
app.kubernetes.io/name: {{ include "domicile-region.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
domicile.dev/region: {{ .Values.region.name | quote }}
{{- end -}}

{{- define "domicile-region.labels" -}}
{{ include "domicile-region.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "domicile-region.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "domicile-region.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "domicile-region.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (required "image.tag or image.digest" .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The env var that carries a provider's API key. */}}
{{- define "domicile-region.providerKeyEnv" -}}
{{- if .api_key_env -}}
{{- .api_key_env -}}
{{- else -}}
{{- printf "DOMICILE_PROVIDER_%s_API_KEY" (regexReplaceAll "[^A-Za-z0-9]" .name "_" | upper) -}}
{{- end -}}
{{- end -}}

{{/*
Paths inside the pod. Keys are copied by the init container from the Secrets into an
in-memory volume, mode 0600 (Domicile refuses a key file others may read).
*/}}
{{- define "domicile-region.keysDir" -}}/run/domicile/keys{{- end -}}

{{/*
domicile.toml of this region, every string written as a JSON string (a valid TOML basic
string). `key = value` lines of a table from a map of scalars and lists.
*/}}
{{- define "domicile-region.tomlPairs" -}}
{{- range $key, $value := . }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end -}}

{{- define "domicile-region.config" -}}
{{- $region := .Values.region -}}
{{- $keys := include "domicile-region.keysDir" . -}}
{{- $name := required "region.name" $region.name -}}
# domicile.toml of region {{ $name }}, rendered by the domicile-region chart from its values.
data_dir = "/var/lib/domicile"

[directory]
database_url = {{ required "directory.databaseUrl" .Values.directory.databaseUrl | toJson }}
secret_file = {{ printf "%s/directory/directory.key" $keys | toJson }}

[regions.{{ $name }}]
display_name = {{ required "region.displayName" $region.displayName | toJson }}
listen = {{ printf "0.0.0.0:%d" (int $region.port) | toJson }}
public_url = {{ required "region.publicUrl" $region.publicUrl | toJson }}
database_url = {{ required "region.databaseUrl" $region.databaseUrl | toJson }}
{{- with $region.keystoreUrl }}
keystore_url = {{ toJson . }}
{{- end }}
blob_url = {{ required "region.blobUrl" $region.blobUrl | toJson }}
{{- $kind := required "region.keyProvider.kind" $region.keyProvider.kind }}
{{- $provider := deepCopy (index $region.keyProvider $kind | default dict) }}
{{- $_ := set $provider "kind" $kind }}
{{- if eq $kind "local" }}
{{- $_ := set $provider "path" (printf "%s/region/kek.key" $keys) }}
{{- end }}
{{- $pairs := list }}
{{- range $key, $value := $provider }}
{{- $pairs = append $pairs (printf "%s = %s" $key (toJson $value)) }}
{{- end }}
key_provider = { {{ join ", " $pairs }} }
key_dir = {{ printf "%s/region" $keys | toJson }}
key_cache_s = {{ $region.keyCacheS | toJson }}
{{- with $region.redisUrl }}
redis_url = {{ toJson . }}
{{- end }}
default_retention = {{ $region.defaultRetention | toJson }}
{{- range $region.providers }}

[[regions.{{ $name }}.providers]]
{{- $fields := omit . "apiKeySecret" "egress" }}
{{- if .apiKeySecret }}
{{- $_ := set $fields "api_key_env" (include "domicile-region.providerKeyEnv" .) }}
{{- end }}
{{- include "domicile-region.tomlPairs" $fields }}
{{- end }}
{{- range $index, $peer := .Values.peerRegions }}

# Region {{ $peer.name }} is served by another data plane: only display_name and public_url
# are read here (the wrong door names it, G3). The rest are placeholders on .invalid hosts,
# required by the file's shape, never connected to.
[regions.{{ $peer.name }}]
display_name = {{ $peer.displayName | toJson }}
public_url = {{ $peer.publicUrl | toJson }}
listen = {{ printf "127.0.0.1:%d" (add (int $region.port) 1 $index) | toJson }}
database_url = {{ printf "postgresql://served-elsewhere.invalid/%s" $peer.name | toJson }}
keystore_url = {{ printf "postgresql://served-elsewhere.invalid/%s_keys" $peer.name | toJson }}
blob_url = {{ printf "s3://served-elsewhere-%s/" $peer.name | toJson }}
key_provider = { kind = "aws-kms", key_id = "served-elsewhere", region = "xx-invalid-1" }
{{- end }}
{{- if .Values.tls.enabled }}

[server]
tls_cert = {{ printf "%s/tls/tls.crt" $keys | toJson }}
tls_key = {{ printf "%s/tls/tls.key" $keys | toJson }}
{{- include "domicile-region.tomlPairs" (omit .Values.config.server "tls_cert" "tls_key") }}
{{- else if .Values.config.server }}

[server]
{{- include "domicile-region.tomlPairs" .Values.config.server }}
{{- end }}
{{- with .Values.config.workspace }}

[workspace]
{{- include "domicile-region.tomlPairs" . }}
{{- end }}
{{- $observability := deepCopy (.Values.config.observability | default dict) }}
{{- if (dig "metricsToken" "name" "" .Values.secrets) }}
{{- $_ := set $observability "metrics_token_env" (include "domicile-region.metricsTokenEnv" .) }}
{{- end }}
{{- with $observability }}

[observability]
{{- include "domicile-region.tomlPairs" . }}
{{- end }}
{{- end -}}

{{/*
The env var holding the bearer token Prometheus presents on GET /metrics
([observability] metrics_token_env; from secrets.metricsToken).
*/}}
{{- define "domicile-region.metricsTokenEnv" -}}
{{- default "DOMICILE_METRICS_TOKEN" (dig "metrics_token_env" "" (.Values.config.observability | default dict)) -}}
{{- end -}}
