{{/* Names: the release's full name, capped at 63 characters (a label value's limit). */}}
{{- define "tributary.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tributary.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tributary.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* What selects this release's pods: the Deployment, Service, PDB, NetworkPolicy, spread
constraints and (through the Service's labels) the ServiceMonitor all use exactly these. */}}
{{- define "tributary.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tributary.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tributary.labels" -}}
helm.sh/chart: {{ include "tributary.chart" . }}
{{ include "tributary.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tributary.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tributary.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tributary.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* "true" when the cluster serves the API version given (or values say to assume it). */}}
{{- define "tributary.hasApi" -}}
{{- $api := index . 0 }}{{- $root := index . 1 }}
{{- if or ($root.Capabilities.APIVersions.Has $api) (has $api $root.Values.assumeApiVersions) }}true{{ end }}
{{- end }}

{{/* "true" when an autoscaler owns the replica count (the Deployment then omits replicas). */}}
{{- define "tributary.autoscaled" -}}
{{- if or .Values.autoscaling.keda.enabled .Values.autoscaling.hpa.enabled }}true{{ end }}
{{- end }}

{{/* The series selector of the lag query: the namespace and job the nodes are scraped under. */}}
{{- define "tributary.kedaQuery" -}}
{{- $p := .Values.autoscaling.keda.prometheus }}
{{- if $p.query }}
{{- $p.query }}
{{- else }}
{{- printf "max(tributary_shard_lag_seconds{namespace=%s,job=%s})" (default .Release.Namespace $p.namespace | quote) (default (include "tributary.fullname" .) $p.job | quote) }}
{{- end }}
{{- end }}

{{/* A duration of node.toml (30s, 500ms, 2m, 1h, a plain number of seconds) in seconds. */}}
{{- define "tributary.seconds" -}}
{{- $text := toString . }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $text }}
{{- $unit := trimPrefix $number $text }}
{{- $factor := dict "ms" 0.001 "" 1.0 "s" 1.0 "m" 60.0 "h" 3600.0 }}
{{- if or (not $number) (not (hasKey $factor $unit)) }}
{{- fail (printf "config.node.shutdown_deadline: %q is not a duration (e.g. 30s, 500ms, 2m)" $text) }}
{{- end }}
{{- mulf (float64 $number) (get $factor $unit) }}
{{- end }}

{{/* One TOML value: strings as basic strings (JSON's escapes are TOML's), whole numbers
without an exponent, booleans, arrays of those. */}}
{{- define "tributary.tomlValue" -}}
{{- if kindIs "string" . }}
{{- toJson . }}
{{- else if kindIs "bool" . }}
{{- . }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) }}
{{- if eq (float64 .) (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if kindIs "slice" . }}
{{- $items := list }}
{{- range . }}{{ $items = append $items (include "tributary.tomlValue" .) }}{{ end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else }}
{{- fail (printf "config: %v cannot be written into node.toml" .) }}
{{- end }}
{{- end }}

{{/* One [section] of node.toml from a map of the file's keys (null values are left out). */}}
{{- define "tributary.tomlSection" -}}
{{- $name := index . 0 }}{{- $values := index . 1 -}}
[{{ $name }}]
{{- range $key := keys $values | sortAlpha }}
{{- $value := get $values $key }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }} = {{ include "tributary.tomlValue" $value }}
{{- end }}
{{- end }}
{{- end }}

{{/* [warehouse] without the keys of the other kinds, so that values switching from the
default postgres to redshift need not null its url (nor the other way round). */}}
{{- define "tributary.warehouse" -}}
{{- $w := .Values.config.warehouse }}
{{- if eq $w.kind "redshift" }}
{{- omit $w "url" | toYaml }}
{{- else }}
{{- omit $w "cluster" "workgroup" "database" "secret_arn" "db_user" "lock_tables" "load" "s3_staging" "copy_role" "copy_min_rows" | toYaml }}
{{- end }}
{{- end }}

{{/* node.toml: the pipeline first (its top-level keys must precede every [section]), then
the sections the node runs against, then [metrics] on the pod's port. */}}
{{- define "tributary.nodeToml" -}}
# tributary's node.toml, rendered by the chart from values.config (README.md, src/run_config.rs).
{{ trim .Values.config.pipeline }}

{{ include "tributary.tomlSection" (list "node" .Values.config.node) }}

{{ include "tributary.tomlSection" (list "stream" .Values.config.stream) }}

{{ include "tributary.tomlSection" (list "lease_table" .Values.config.lease_table) }}

{{ include "tributary.tomlSection" (list "warehouse" (include "tributary.warehouse" . | fromYaml)) }}

[metrics]
listen = "0.0.0.0:{{ .Values.metrics.port }}"
{{- end }}

{{/* Render-time checks: each failure names the value to change. */}}
{{- define "tributary.validate" -}}
{{- $deadline := float64 (include "tributary.seconds" (.Values.config.node.shutdown_deadline | default "30s")) }}
{{- $grace := float64 .Values.terminationGracePeriodSeconds }}
{{- $margin := float64 .Values.drainMarginSeconds }}
{{- if lt $margin 5.0 }}
{{- fail (printf "drainMarginSeconds (%v) must be at least 5: the node's drain takes up to config.node.shutdown_deadline + 5s (DRAIN_MARGIN in src/run.rs) before it gives its leases up" $margin) }}
{{- end }}
{{- if le $grace (addf $deadline $margin) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed config.node.shutdown_deadline (%vs) + drainMarginSeconds (%v): the kubelet would kill a draining node" $grace $deadline $margin) }}
{{- end }}
{{- if not .Values.config.stream.name }}
{{- fail "config.stream.name: the stream's name or ARN is required" }}
{{- end }}
{{- if not .Values.config.lease_table.name }}
{{- fail "config.lease_table.name: the lease table's name is required" }}
{{- end }}
{{- if not (contains "[[table]]" .Values.config.pipeline) }}
{{- fail "config.pipeline: the pipeline needs at least one [[table]]" }}
{{- end }}
{{- $a := .Values.autoscaling }}
{{- if and $a.keda.enabled $a.hpa.enabled }}
{{- fail "autoscaling: enable keda or hpa, not both (each would own the replica count)" }}
{{- end }}
{{- if include "tributary.autoscaled" . }}
{{- if lt (int64 $a.openShards) 1 }}
{{- fail "autoscaling.openShards: set the stream's open shard count (autoscalers stay at or below it)" }}
{{- end }}
{{- $min := ternary $a.keda.minReplicaCount $a.hpa.minReplicas $a.keda.enabled | int64 }}
{{- $max := ternary $a.keda.maxReplicaCount $a.hpa.maxReplicas $a.keda.enabled | int64 }}
{{- $field := ternary "autoscaling.keda.maxReplicaCount" "autoscaling.hpa.maxReplicas" $a.keda.enabled }}
{{- $minField := ternary "autoscaling.keda.minReplicaCount" "autoscaling.hpa.minReplicas" $a.keda.enabled }}
{{- if gt $max (int64 $a.openShards) }}
{{- fail (printf "%s (%d) must not exceed autoscaling.openShards (%d): a node beyond the open shard count holds no lease" $field $max (int64 $a.openShards)) }}
{{- end }}
{{- if or (lt $min 1) (gt $min $max) }}
{{- fail (printf "%s (%d) must be between 1 and %s (%d)" $minField $min $field $max) }}
{{- end }}
{{- if $a.keda.enabled }}
{{- $fallback := int64 $a.keda.fallbackReplicas }}
{{- if or (lt $fallback $min) (gt $fallback $max) }}
{{- fail (printf "autoscaling.keda.fallbackReplicas (%d) must be between minReplicaCount (%d) and maxReplicaCount (%d)" $fallback $min $max) }}
{{- end }}
{{- if not (include "tributary.hasApi" (list "keda.sh/v1alpha1" .)) }}
{{- fail "autoscaling.keda.enabled: the cluster does not serve keda.sh/v1alpha1 (install KEDA; offline: --api-versions keda.sh/v1alpha1 or assumeApiVersions)" }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
