{{/*
Names and labels. The templates below need only .Values and .Release (and .Chart when
present), so an application's chart that depends on this one can call them with
  (dict "Values" (index .Values "gemini-breaker") "Release" .Release)
and get the same names as the resources this chart renders.
*/}}

{{- define "gemini-breaker.name" -}}
{{- default "gemini-breaker" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gemini-breaker.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "gemini-breaker.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The chart's appVersion, or "" when called from another chart's context. */}}
{{- define "gemini-breaker.appVersion" -}}
{{- if and .Chart (eq .Chart.Name "gemini-breaker") }}{{ .Chart.AppVersion }}{{ end }}
{{- end }}

{{- define "gemini-breaker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gemini-breaker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gemini-breaker.labels" -}}
{{ include "gemini-breaker.selectorLabels" . }}
{{- if and .Chart (eq .Chart.Name "gemini-breaker") }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- with (include "gemini-breaker.appVersion" .) }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service | default "Helm" }}
app.kubernetes.io/part-of: gemini-breaker
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "gemini-breaker.image" -}}
{{- $tag := .Values.image.tag | default (include "gemini-breaker.appVersion" .) -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ required "image.tag: set it when the sidecar template is used from another chart" $tag }}
{{- end -}}
{{- end }}

{{/* The address the proxy listens on: every interface for the gateway, loopback (by default)
for a sidecar. */}}
{{- define "gemini-breaker.host" -}}
{{- if eq .Values.mode "sidecar" }}{{ .Values.sidecar.host }}{{ else }}0.0.0.0{{ end }}
{{- end }}

{{- define "gemini-breaker.redisConfigured" -}}
{{- if or .Values.redis.url .Values.redis.sentinel.masterName .Values.redis.cluster.nodes }}true{{ end }}
{{- end }}

{{/*
The proxy's configuration file. Secrets never appear here: they reach the proxy as
environment variables (see gemini-breaker.env).
*/}}
{{- define "gemini-breaker.config" -}}
{{- $v := .Values -}}
{{- $server := dict "log_level" $v.server.logLevel "log_format" $v.server.logFormat "workers" $v.server.workers "request_deadline" $v.server.requestDeadline "allow_open_relay" $v.server.allowOpenRelay -}}
{{- $redis := dict "namespace" $v.redis.namespace -}}
{{- with $v.redis.url }}{{ $_ := set $redis "url" . }}{{ end -}}
{{- with $v.redis.sentinel.masterName -}}
{{- $sentinel := dict "master_name" . "addresses" $v.redis.sentinel.addresses -}}
{{- with $v.redis.sentinel.username }}{{ $_ := set $sentinel "username" . }}{{ end -}}
{{- $_ := set $redis "sentinel" $sentinel -}}
{{- end -}}
{{- with $v.redis.cluster.nodes }}{{ $_ := set $redis "cluster" (dict "nodes" .) }}{{ end -}}
{{- with $v.redis.username }}{{ $_ := set $redis "username" . }}{{ end -}}
{{- $tls := $v.redis.tls -}}
{{- if or $tls.enabled $tls.existingSecret -}}
{{- $t := dict "enabled" $tls.enabled "check_hostname" $tls.checkHostname -}}
{{- $dir := "/etc/gemini-breaker/redis-tls" -}}
{{- with $tls.caKey }}{{ $_ := set $t "ca_file" (printf "%s/%s" $dir .) }}{{ end -}}
{{- with $tls.certKey }}{{ $_ := set $t "cert_file" (printf "%s/%s" $dir .) }}{{ end -}}
{{- with $tls.keyKey }}{{ $_ := set $t "key_file" (printf "%s/%s" $dir .) }}{{ end -}}
{{- $_ := set $redis "tls" $t -}}
{{- end -}}
{{- with $v.server.tls.existingSecret -}}
{{- $dir := "/etc/gemini-breaker/tls" -}}
{{- $_ := set $server "tls" (dict "cert_file" (printf "%s/%s" $dir $v.server.tls.certKey) "key_file" (printf "%s/%s" $dir $v.server.tls.keyKey)) -}}
{{- end -}}
{{- $upstream := dict "base_url" $v.upstream.baseUrl -}}
{{- $config := deepCopy ($v.config | default dict) -}}
{{- $_ := set $config "server" (merge $server (get $config "server" | default dict)) -}}
{{- $_ := set $config "upstream" (merge $upstream (get $config "upstream" | default dict)) -}}
{{- $_ := set $config "redis" $redis -}}
{{- with $v.telemetry.otlpEndpoint }}{{ $_ := set $config "telemetry" (dict "otlp_endpoint" .) }}{{ end -}}
{{- with $v.routes }}{{ $_ := set $config "routes" . }}{{ end -}}
{{- if $v.vertex.project }}{{ $_ := set $config "vertex" (dict "project" $v.vertex.project "location" $v.vertex.location) }}{{ end -}}
{{- toYaml $config }}
{{- end }}

{{/* Each credential: values key, environment variable. */}}
{{- define "gemini-breaker.secretEnvNames" -}}
apiKey: GEMINI_API_KEY
clientTokens: GEMINI_BREAKER_CLIENT_TOKENS
adminToken: GEMINI_BREAKER_ADMIN_TOKEN
redisPassword: GEMINI_BREAKER_REDIS_PASSWORD
redisSentinelPassword: GEMINI_BREAKER_REDIS_SENTINEL_PASSWORD
{{- end }}

{{/* Whether the chart creates its Secret (some credential is given as a value). */}}
{{- define "gemini-breaker.createsSecret" -}}
{{- range $name, $s := .Values.secrets }}{{ if $s.value }}true{{ end }}{{ end }}
{{- end }}

{{- define "gemini-breaker.checkValues" -}}
{{- $redis := include "gemini-breaker.redisConfigured" . -}}
{{- if and (not $redis) (or .Values.secrets.redisPassword.value .Values.secrets.redisPassword.existingSecret .Values.redis.username .Values.redis.tls.enabled .Values.redis.tls.existingSecret) -}}
{{- fail "redis: a password, username or TLS is set but no Redis is (set redis.url, redis.sentinel or redis.cluster)" -}}
{{- end -}}
{{- if and (or .Values.secrets.redisSentinelPassword.value .Values.secrets.redisSentinelPassword.existingSecret) (not .Values.redis.sentinel.masterName) -}}
{{- fail "secrets.redisSentinelPassword: set only with redis.sentinel" -}}
{{- end -}}
{{- $secrets := .Values.secrets -}}
{{- $key := or $secrets.apiKey.value $secrets.apiKey.existingSecret -}}
{{- $tokens := or $secrets.clientTokens.value $secrets.clientTokens.existingSecret -}}
{{- $host := include "gemini-breaker.host" . -}}
{{- if and $key (not (has $host (list "127.0.0.1" "localhost" "::1"))) (not $tokens) (not .Values.server.allowOpenRelay) -}}
{{- fail (printf "secrets.clientTokens: the proxy listens on %s with secrets.apiKey; set client tokens (callers send one as their API key) or server.allowOpenRelay: true" $host) -}}
{{- end -}}
{{- if and $tokens (not $key) -}}
{{- fail "secrets.clientTokens: they stand for secrets.apiKey, which is not set" -}}
{{- end -}}
{{- if and (eq .Values.mode "sidecar") (or .Values.serviceAccount.create .Values.serviceAccount.annotations .Values.serviceAccountName) -}}
{{- fail "serviceAccount: sidecar mode makes no pods, so the chart's ServiceAccount would be ignored; the sidecar runs as the application's pod service account: annotate that one (iam.gke.io/gcp-service-account) for GKE workload identity" -}}
{{- end -}}
{{- if and (gt (int .Values.server.workers) 1) (not $redis) -}}
{{- fail "server.workers: several workers per pod need a Redis (redis.url, redis.sentinel or redis.cluster)" -}}
{{- end -}}
{{- end }}

{{/* Environment of the proxy container: where the file is, the listen address, credentials. */}}
{{- define "gemini-breaker.env" -}}
- name: GEMINI_BREAKER_CONFIG
  value: /etc/gemini-breaker/config.yaml
- name: GEMINI_BREAKER_HOST
  value: {{ include "gemini-breaker.host" . | quote }}
- name: GEMINI_BREAKER_PORT
  value: {{ .Values.server.port | quote }}
{{- $fullname := include "gemini-breaker.fullname" . }}
{{- range $name, $env := include "gemini-breaker.secretEnvNames" . | fromYaml }}
{{- $s := index $.Values.secrets $name }}
{{- if or $s.existingSecret $s.value }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ $s.existingSecret | default $fullname }}
      key: {{ $s.key }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A probe: HTTP from the kubelet when the proxy listens beyond loopback, otherwise a
command inside the container (the kubelet reaches the pod's IP, never its loopback), which
asks the proxy directly (no HTTP_PROXY) and fails on any answer but 2xx. */}}
{{- define "gemini-breaker.probe" -}}
{{- $root := index . 0 -}}
{{- $path := index . 1 -}}
{{- $settings := index . 2 -}}
{{- $host := include "gemini-breaker.host" $root -}}
{{- $tls := $root.Values.server.tls.existingSecret -}}
{{- if or (eq $host "127.0.0.1") (eq $host "localhost") (eq $host "::1") -}}
exec:
  command:
    - python
    - -c
    {{- if $tls }}
    {{- /* The probe asks whether the process serves; the certificate's names are the
    clients' concern (a certificate need not name 127.0.0.1), so it is not verified. */}}
    - "import sys, ssl, urllib.request as u; c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE; u.build_opener(u.ProxyHandler({}), u.HTTPSHandler(context=c)).open(sys.argv[1], timeout=2)"
    {{- else }}
    - "import sys, urllib.request as u; u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=2)"
    {{- end }}
    - {{ printf "%s%s" (include "gemini-breaker.baseUrl" $root) $path | quote }}
{{- else -}}
httpGet:
  path: {{ $path }}
  port: http
  {{- if $tls }}
  scheme: HTTPS
  {{- end }}
{{- end }}
{{ toYaml $settings }}
{{- end }}

{{/*
The proxy container. In sidecar mode an application's pod adds it with
  containers:
    {{- include "gemini-breaker.sidecar" $ctx | nindent 4 }}
  volumes:
    {{- include "gemini-breaker.volumes" $ctx | nindent 4 }}
and the pod annotation {{ include "gemini-breaker.checksums" $ctx }} to roll on changes.
*/}}
{{- define "gemini-breaker.container" -}}
{{- include "gemini-breaker.checkValues" . -}}
- name: gemini-breaker
  image: {{ include "gemini-breaker.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: [gemini-breaker]
  args: [serve]
  ports:
    - name: http
      containerPort: {{ .Values.server.port }}
      protocol: TCP
  env:
    {{- include "gemini-breaker.env" . | nindent 4 }}
  volumeMounts:
    - name: gemini-breaker-config
      mountPath: /etc/gemini-breaker/config.yaml
      subPath: config.yaml
      readOnly: true
    - name: gemini-breaker-tmp
      mountPath: /tmp
    {{- if .Values.server.tls.existingSecret }}
    - name: gemini-breaker-tls
      mountPath: /etc/gemini-breaker/tls
      readOnly: true
    {{- end }}
    {{- if .Values.redis.tls.existingSecret }}
    - name: gemini-breaker-redis-tls
      mountPath: /etc/gemini-breaker/redis-tls
      readOnly: true
    {{- end }}
  startupProbe:
    {{- include "gemini-breaker.probe" (list . "/healthz" .Values.probes.startup) | nindent 4 }}
  livenessProbe:
    {{- include "gemini-breaker.probe" (list . "/healthz" .Values.probes.liveness) | nindent 4 }}
  readinessProbe:
    {{- include "gemini-breaker.probe" (list . "/readyz" .Values.probes.readiness) | nindent 4 }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
{{- end }}

{{/* The base URL an application in the pod uses for its sidecar: https:// when the
listener has a certificate (the google-genai SDK opens Live sessions with wss:// only). */}}
{{- define "gemini-breaker.baseUrl" -}}
{{- $scheme := ternary "https" "http" (not (empty .Values.server.tls.existingSecret)) -}}
{{ printf "%s://127.0.0.1:%v" $scheme .Values.server.port }}
{{- end }}

{{/*
What an application container needs to trust the proxy's certificate: a map with the
"volumeMounts" (the CA alone, from the gemini-breaker-tls-ca volume of
"gemini-breaker.volumes") and the "env" (SSL_CERT_FILE, which the google-genai SDK reads for
its HTTP and WebSocket connections); both empty when the listener has no certificate. Use it as
  {{- $trust := include "gemini-breaker.appTrust" $ctx | fromYaml }}
  env: {{- toYaml $trust.env | nindent 4 }}
  volumeMounts: {{- toYaml $trust.volumeMounts | nindent 4 }}
*/}}
{{- define "gemini-breaker.appTrust" -}}
{{- with .Values.server.tls }}
{{- if .existingSecret }}
volumeMounts:
  - name: gemini-breaker-tls-ca
    mountPath: /etc/gemini-breaker/tls-ca
    readOnly: true
env:
  - name: SSL_CERT_FILE
    value: {{ printf "/etc/gemini-breaker/tls-ca/%s" .caKey | quote }}
{{- else }}
volumeMounts: []
env: []
{{- end }}
{{- end }}
{{- end }}

{{- define "gemini-breaker.sidecar" -}}
{{- $values := merge (dict "mode" "sidecar") .Values -}}
{{- include "gemini-breaker.container" (dict "Values" $values "Release" .Release "Chart" .Chart) }}
{{- end }}

{{- define "gemini-breaker.volumes" -}}
- name: gemini-breaker-config
  configMap:
    name: {{ include "gemini-breaker.fullname" . }}
- name: gemini-breaker-tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- with .Values.server.tls }}
{{- if .existingSecret }}
- name: gemini-breaker-tls
  secret:
    secretName: {{ .existingSecret }}
    items:
      - key: {{ .certKey }}
        path: {{ .certKey }}
      - key: {{ .keyKey }}
        path: {{ .keyKey }}
    # Readable by the proxy's user without an fsGroup; only the proxy container mounts it.
    defaultMode: 0444
{{- if eq $.Values.mode "sidecar" }}
- name: gemini-breaker-tls-ca
  secret:
    secretName: {{ .existingSecret }}
    # The application's containers get the CA alone, never the proxy's private key.
    items:
      - key: {{ .caKey }}
        path: {{ .caKey }}
    defaultMode: 0444
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.redis.tls.existingSecret }}
- name: gemini-breaker-redis-tls
  secret:
    secretName: {{ . }}
    # Readable by the proxy's user without an fsGroup (an application's pod may have none).
    defaultMode: 0444
{{- end }}
{{- end }}

{{/* Pod annotations that change when the configuration or the chart's Secret does, so the
pods roll. The Secret's part is a digest of its data, not the data. */}}
{{- define "gemini-breaker.checksums" -}}
checksum/config: {{ include "gemini-breaker.config" . | sha256sum }}
{{- if include "gemini-breaker.createsSecret" . }}
checksum/secret: {{ include "gemini-breaker.secretData" . | sha256sum }}
{{- end }}
{{- end }}

{{- define "gemini-breaker.secretData" -}}
{{- range $name, $s := .Values.secrets }}
{{- if and $s.value (not $s.existingSecret) }}
{{ $s.key }}: {{ $s.value | b64enc | quote }}
{{- end }}
{{- end }}
{{- end }}
