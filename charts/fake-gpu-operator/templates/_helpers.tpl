{{/*
Helpers. Values are read nil-safe: a values file that sets a top-level key to null, or an
upgrade with --reuse-values from an older chart, must render the defaults instead of failing
with "nil pointer evaluating interface". Top-level maps are read through fgo.get, which falls
back to the chart's defaults (values.yaml, carried by _defaults.tpl) when the key is null.
*/}}

{{/* A top-level map value as YAML, the chart default if null: (list $ "devicePlugin"). */}}
{{- define "fgo.get" -}}
{{- $root := index . 0 -}}
{{- $key := index . 1 -}}
{{- $v := index $root.Values $key -}}
{{- if kindIs "invalid" $v -}}
{{- $v = index (include "fgo.defaults" $root | fromYaml) $key -}}
{{- end -}}
{{- toYaml (default dict $v) -}}
{{- end -}}

{{/* Name of the chart, truncated to the DNS label limit. */}}
{{- define "fgo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of a cluster-scoped object of this release: (list $ "status-updater"). */}}
{{- define "fgo.clusterName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-fgo-%s" $root.Release.Name (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fgo.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "fgo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fake-gpu-operator
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "status-updater") */}}
{{- define "fgo.selectorLabels" -}}
{{- if eq .component "status-exporter" }}
{{- /* The reference's exporter pods say they are NVIDIA's container toolkit: Run:ai's node
checks look for pods with this name. Only pods, their Service and ServiceMonitor select by it;
the DaemonSet keeps the reference's selector (app: nvidia-dcgm-exporter). */}}
app.kubernetes.io/name: nvidia-container-toolkit
{{- else }}
app.kubernetes.io/name: {{ include "fgo.name" .root }}
{{- end }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "fgo.componentLabels" -}}
{{ include "fgo.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- with include "fgo.referenceLabels" . }}{{ . }}{{ end }}
{{- end -}}

{{/*
The labels the reference chart (run-ai/fake-gpu-operator) gives the same component, added to our
objects and pods so its users' selectors (kubectl wait -l app=status-updater, ServiceMonitors on
app=nvidia-dcgm-exporter) find ours. (dict "root" $ "component" "status-updater")
*/}}
{{- define "fgo.referenceLabels" -}}
{{- $ref := dict
  "status-updater" (list "status-updater" "status-updater")
  "device-plugin" (list "device-plugin" "device-plugin")
  "kwok-gpu-capacity" (list "kwok-gpu-device-plugin" "kwok-gpu-device-plugin")
  "kwok-dra-plugin" (list "kwok-dra-plugin" "kwok-dra-plugin")
  "status-exporter" (list "nvidia-dcgm-exporter" "status-exporter")
  "status-exporter-kwok" (list "nvidia-dcgm-exporter-kwok" "") -}}
{{- with index $ref .component }}
app: {{ index . 0 }}
{{- with index . 1 }}
component: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Labels of a component's pods: our selector labels plus the reference's. */}}
{{- define "fgo.podLabels" -}}
{{ include "fgo.selectorLabels" . }}
{{- with include "fgo.referenceLabels" . }}{{ . }}{{ end }}
{{- end -}}

{{/*
Selector of a component's DaemonSet/Deployment. The two that keep the reference's names
(nvidia-dcgm-exporter, nvidia-dcgm-exporter-kwok) keep its selectors too: spec.selector is
immutable, so any other value makes `helm upgrade` from a reference release fail.
*/}}
{{- define "fgo.workloadSelector" -}}
{{- if eq .component "status-exporter" -}}
app: nvidia-dcgm-exporter
{{- else if eq .component "status-exporter-kwok" -}}
app: nvidia-dcgm-exporter-kwok
{{- else -}}
{{ include "fgo.selectorLabels" . }}
{{- end -}}
{{- end -}}

{{/* Whether a component is enabled: (list $ "key" defaultBool). Missing or null -> default. */}}
{{- define "fgo.enabled" -}}
{{- $root := index . 0 -}}
{{- $values := include "fgo.get" (list $root (index . 1)) | fromYaml -}}
{{- if and (hasKey $values "enabled") (not (kindIs "invalid" $values.enabled)) -}}
{{- if eq (toString $values.enabled) "false" -}}false{{- else -}}true{{- end -}}
{{- else -}}
{{- index . 2 -}}
{{- end -}}
{{- end -}}

{{/* Image of a component: (list $ componentValues defaultRepository) */}}
{{- define "fgo.image" -}}
{{- $root := index . 0 -}}
{{- $c := default dict (index . 1) -}}
{{- $img := default dict $c.image -}}
{{- $global := include "fgo.get" (list $root "image") | fromYaml -}}
{{- $repo := default (index . 2) $img.repository -}}
{{- $registry := default "ghcr.io/fake-gpu-operator" $global.registry | trimSuffix "/" -}}
{{- $tag := default (default $root.Chart.AppVersion $global.tag) $img.tag -}}
{{- if contains "/" $repo -}}{{ $repo }}:{{ $tag }}{{- else -}}{{ $registry }}/{{ $repo }}:{{ $tag }}{{- end -}}
{{- end -}}

{{- define "fgo.pullPolicy" -}}
{{- $root := index . 0 -}}
{{- $img := default dict (default dict (index . 1)).image -}}
{{- default (default "IfNotPresent" (include "fgo.get" (list $root "image") | fromYaml).pullPolicy) $img.pullPolicy -}}
{{- end -}}

{{/* The node pool label key (nil-safe). */}}
{{- define "fgo.poolLabelKey" -}}
{{- $t := include "fgo.get" (list $ "topology") | fromYaml -}}
{{- $c := default dict .Values.cluster -}}
{{- default (default "run.ai/simulated-gpu-node-pool" $t.nodePoolLabelKey) $c.nodePoolLabelKey -}}
{{- end -}}

{{/* Environment every service gets: where the topology lives, its health port, log level. */}}
{{- define "fgo.commonEnv" -}}
- name: TOPOLOGY_CM_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: HEALTH_PORT
  value: "8080"
- name: LOG_LEVEL
  value: {{ .Values.logLevel | default "INFO" | quote }}
{{- end -}}

{{/* The telemetry seed: metrics and nvidia-smi in pods must use the same one. */}}
{{- define "fgo.seedEnv" -}}
- name: FGO_SEED
  value: {{ .Values.telemetrySeed | default 0 | int | quote }}
{{- end -}}

{{/* Name of the cluster topology ConfigMap, prefix of the per-node ones (topology-<node>). */}}
{{- define "fgo.topologyNameEnv" -}}
- name: TOPOLOGY_CM_NAME
  value: topology
{{- end -}}

{{- define "fgo.nodeNameEnv" -}}
- name: NODE_NAME
  valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
{{- end -}}

{{/*
Affinity of a component: (dict "root" $ "c" componentValues "node" bool). For node agents
(node=true) with restrictToSimulatedPools, the pool label is required in every node selector
term (terms are ORed, expressions ANDed), so whatever the user's affinity says, the pod can only
land on nodes of a simulated pool.
*/}}
{{- define "fgo.affinity" -}}
{{- $root := .root -}}
{{- $affinity := deepCopy (default dict (default dict .c).affinity) -}}
{{- if and .node (ne (toString $root.Values.restrictToSimulatedPools) "false") -}}
{{- $expr := dict "key" (include "fgo.poolLabelKey" $root) "operator" "Exists" -}}
{{- $na := default dict $affinity.nodeAffinity -}}
{{- $req := default dict $na.requiredDuringSchedulingIgnoredDuringExecution -}}
{{- $terms := list -}}
{{- range $t := (default list $req.nodeSelectorTerms) -}}
{{- $term := deepCopy $t -}}
{{- $_ := set $term "matchExpressions" (append (default list $term.matchExpressions) $expr) -}}
{{- $terms = append $terms $term -}}
{{- end -}}
{{- if not $terms -}}{{- $terms = list (dict "matchExpressions" (list $expr)) -}}{{- end -}}
{{- $_ := set $req "nodeSelectorTerms" $terms -}}
{{- $_ := set $na "requiredDuringSchedulingIgnoredDuringExecution" $req -}}
{{- $_ := set $affinity "nodeAffinity" $na -}}
{{- end -}}
{{- with $affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Scheduling knobs of a component: (dict "root" $ "c" componentValues "node" bool) */}}
{{- define "fgo.scheduling" -}}
{{- $c := default dict .c -}}
{{- with $c.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- include "fgo.affinity" . }}
{{- with $c.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- $secrets := .root.Values.imagePullSecrets }}
{{- if hasKey $c "pullSecrets" }}{{ $secrets = $c.pullSecrets }}{{ end }}
{{- with $secrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod security context of the central (non-node) components: PSA "restricted". */}}
{{- define "fgo.restrictedPodSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{/* Container security context of the central (non-node) components: PSA "restricted". */}}
{{- define "fgo.restrictedContainerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "fgo.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: health}
  periodSeconds: 10
  failureThreshold: 6
readinessProbe:
  httpGet: {path: /readyz, port: health}
  periodSeconds: 5
{{- end -}}

{{/* The topology document; with no pools given, the seed's default (2 x Tesla K80 per node). */}}
{{- define "fgo.topologyYaml" -}}
{{- $t := dict -}}
{{- if .Values.cluster -}}
{{- $t = deepCopy .Values.cluster -}}
{{- else -}}
{{- $t = deepCopy (include "fgo.get" (list $ "topology") | fromYaml) -}}
{{- $_ := set $t "nodePoolLabelKey" (include "fgo.poolLabelKey" .) -}}
{{- if not $t.migStrategy }}{{ $_ := set $t "migStrategy" "mixed" }}{{ end -}}
{{- if not $t.nodePools -}}
{{- $_ := set $t "nodePools" (dict "default" (dict "gpus" (list (dict "type" "Tesla K80" "count" 2)))) -}}
{{- end -}}
{{- end -}}
{{- /* devicePlugin.config: NVIDIA device-plugin sharing configs (docs/sharing.md) */ -}}
{{- $dp := (include "fgo.get" (list $ "devicePlugin") | fromYaml).config | default dict -}}
{{- if and $dp.default (not (hasKey ($dp.configs | default dict) $dp.default)) -}}
{{- fail (printf "devicePlugin.config.default: %q names no config of devicePlugin.config.configs" $dp.default) -}}
{{- end -}}
{{- if or $dp.configs $dp.default -}}
{{- $_ := set $t "devicePluginConfig" (dict "default" ($dp.default | default "") "configs" ($dp.configs | default dict)) -}}
{{- end -}}
{{ toYaml $t }}
{{- end -}}

{{/* Every ServiceAccount/binding pair of a component: (dict "root" $ "component" name) */}}
{{- define "fgo.serviceAccount" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: fgo-{{ .component }}
  namespace: {{ .root.Release.Namespace }}
  labels: {{- include "fgo.componentLabels" . | nindent 4 }}
# No token by default: a pod gets one only where its spec asks for it (ours all call the API).
automountServiceAccountToken: false
{{- end -}}

{{/* ClusterRoleBinding of fgo-<component> to ClusterRole <release>-fgo-<component>. */}}
{{- define "fgo.clusterRoleBinding" -}}
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ include "fgo.clusterName" (list .root .component) }}
  labels: {{- include "fgo.componentLabels" . | nindent 4 }}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {{ include "fgo.clusterName" (list .root .component) }}}
subjects:
  - {kind: ServiceAccount, name: fgo-{{ .component }}, namespace: {{ .root.Release.Namespace }}}
{{- end -}}

{{/* RoleBinding of fgo-<component> to Role .role in the release namespace. */}}
{{- define "fgo.roleBinding" -}}
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: fgo-{{ .component }}
  namespace: {{ .root.Release.Namespace }}
  labels: {{- include "fgo.componentLabels" . | nindent 4 }}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: {{ .role }}}
subjects:
  - {kind: ServiceAccount, name: fgo-{{ .component }}, namespace: {{ .root.Release.Namespace }}}
{{- end -}}

{{/*
Host directory shared by the node agents and GPU containers: bin/nvidia-smi (installed by the
init container) and state/ (the node's topology snapshot, mounted read-only into GPU pods).
*/}}
{{- define "fgo.hostDir" -}}/var/lib/fake-gpu-operator{{- end -}}

{{/* Init container installing the standalone nvidia-smi into the host dir: (list $ c repo) */}}
{{- define "fgo.installNvidiaSmi" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
- name: install-nvidia-smi
  image: {{ include "fgo.image" (list $root $c (index . 2)) }}
  imagePullPolicy: {{ include "fgo.pullPolicy" (list $root $c) }}
  command: [fgo-install-nvidia-smi, /host{{ include "fgo.hostDir" $root }}]
  resources: {requests: {cpu: 10m, memory: 32Mi}, limits: {cpu: 500m, memory: 128Mi}}
  # Root (uid 0) so it may write to the root-owned host directory; no capabilities needed.
  securityContext:
    runAsUser: 0
    runAsNonRoot: false
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities: {drop: [ALL]}
    seccompProfile: {type: RuntimeDefault}
  volumeMounts:
    - {name: fgo-host, mountPath: /host{{ include "fgo.hostDir" $root }}}
{{- end -}}

{{/* "true" when the node agents install the Run:ai preloader stubs (runai.preloaderStubs). */}}
{{- define "fgo.runaiPreloader" -}}
{{- if eq (toString (include "fgo.get" (list . "runai") | fromYaml).preloaderStubs) "true" -}}true{{- end -}}
{{- end -}}

{{/* Init container installing the no-op Run:ai preloader stubs: (list $ c repo) */}}
{{- define "fgo.installRunaiPreloader" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
- name: install-runai-preloader
  image: {{ include "fgo.image" (list $root $c (index . 2)) }}
  imagePullPolicy: {{ include "fgo.pullPolicy" (list $root $c) }}
  command: [fgo-install-runai-preloader, /host/var/lib/runai/shared]
  resources: {requests: {cpu: 10m, memory: 32Mi}, limits: {cpu: 200m, memory: 64Mi}}
  # Root (uid 0) so it may write to the root-owned host directory; no capabilities needed.
  securityContext:
    runAsUser: 0
    runAsNonRoot: false
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities: {drop: [ALL]}
    seccompProfile: {type: RuntimeDefault}
  volumeMounts:
    - {name: runai-shared, mountPath: /host/var/lib/runai/shared}
{{- end -}}

{{/* emptyDir /tmp: root filesystems are read-only; Python libraries may want a temp dir. */}}
{{- define "fgo.tmpVolumeMount" -}}
- {name: tmp, mountPath: /tmp}
{{- end -}}
{{- define "fgo.tmpVolume" -}}
- {name: tmp, emptyDir: {sizeLimit: 64Mi}}
{{- end -}}

{{/*
"true" if a cluster-scoped object we would render already exists and belongs to someone else
(NVIDIA's DRA driver or GPU operator, a cluster's bootstrap): (list $ apiVersion kind name).
We then leave it alone instead of failing the install on Helm's ownership check. `helm
template` has no cluster to look in, so it always renders the object.
*/}}
{{- define "fgo.foreign" -}}
{{- $root := index . 0 -}}
{{- $existing := lookup (index . 1) (index . 2) "" (index . 3) -}}
{{- if $existing -}}
{{- $ann := default dict $existing.metadata.annotations -}}
{{- if or (ne (index $ann "meta.helm.sh/release-name" | default "") $root.Release.Name) (ne (index $ann "meta.helm.sh/release-namespace" | default "") $root.Release.Namespace) -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* "true" when NodeResourceTopology objects are published (statusExporter.nodeResourceTopology
.enabled, the reference's key; the status-updater publishes them, docs/numa.md). */}}
{{- define "fgo.nrtEnabled" -}}
{{- $nrt := default dict (include "fgo.get" (list . "statusExporter") | fromYaml).nodeResourceTopology -}}
{{- if eq (toString $nrt.enabled) "true" -}}true{{- end -}}
{{- end -}}

{{- /* A map of feature gates as the drivers' --feature-gates flag spells it: `A=true,B=false`
(sorted, so the rendered pod spec does not change between renders). */ -}}
{{- define "fgo.featureGates" -}}
{{- $gates := list -}}
{{- range $name := keys . | sortAlpha -}}
{{- $gates = append $gates (printf "%s=%t" $name (index $ $name)) -}}
{{- end -}}
{{- join "," $gates -}}
{{- end -}}
