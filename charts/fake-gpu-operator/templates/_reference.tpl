{{/*
Keys of the reference chart (run-ai/fake-gpu-operator 0.2) that have a counterpart here are
mapped onto it; the ones without are named by NOTES.txt. docs/chart.md, "Values of the
reference chart", classifies every key.
*/}}

{{/*
The DRA kubelet plugin's values with the reference's draPlugin.kubeletPlugin.* mapped onto ours
(as YAML). Precedence: our draPlugin.<key> when it differs from the chart's default (the user set
it), else the reference's key when set (not empty), else our default. podAnnotations are merged
(ours win on a conflict). A reference healthcheckPort of 0 (its "no probe") keeps ours. The
reference's liveness probe timings go to livenessProbe. draPlugin.imagePullSecrets are added to
imagePullSecrets.
*/}}
{{- define "fgo.draPluginValues" -}}
{{- $c := deepCopy (include "fgo.get" (list . "draPlugin") | fromYaml) -}}
{{- $d := default dict (include "fgo.defaults" . | fromYaml).draPlugin -}}
{{- $kp := $c.kubeletPlugin -}}
{{- if not (kindIs "map" $kp) }}{{ $kp = dict }}{{ end -}}
{{- $plugin := default dict (default dict $kp.containers).plugin -}}
{{- $ref := pick $kp "priorityClassName" "nodeSelector" "tolerations" "affinity" "kubeletRegistrarDirectoryPath" "kubeletPluginsDirectoryPath" -}}
{{- if $plugin.resources }}{{ $_ := set $ref "resources" $plugin.resources }}{{ end -}}
{{- if gt (int (default 0 $plugin.healthcheckPort)) 0 }}{{ $_ := set $ref "healthcheckPort" $plugin.healthcheckPort }}{{ end -}}
{{- $applied := list -}}
{{- $overridden := list -}}
{{- range $k := keys $ref | sortAlpha -}}
{{- $v := index $ref $k -}}
{{- if not (empty $v) -}}
{{- if eq (toYaml (index $c $k)) (toYaml (index $d $k)) -}}
{{- $_ := set $c $k $v -}}
{{- $applied = append $applied $k -}}
{{- else -}}
{{- $overridden = append $overridden $k -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $_ := set $c "referenceApplied" $applied -}}
{{- $_ := set $c "referenceOverridden" $overridden -}}
{{- $_ := set $c "podAnnotations" (merge (default dict $c.podAnnotations) (default dict $kp.podAnnotations)) -}}
{{- with $kp.updateStrategy }}{{ $_ := set $c "updateStrategy" . }}{{ end -}}
{{- $probe := pick (default dict $plugin.livenessProbe) "initialDelaySeconds" "periodSeconds" "timeoutSeconds" "failureThreshold" -}}
{{- $_ := set $c "livenessProbe" (merge $probe (dict "initialDelaySeconds" 10 "periodSeconds" 10)) -}}
{{- $_ := set $c "pullSecrets" (concat (default list $.Values.imagePullSecrets) (default list $c.imagePullSecrets)) -}}
{{- toYaml $c -}}
{{- end -}}

{{/*
Reference keys that are set but have no effect here, one per line: "<key>: <why>". A key is
named when it is set (not null), unless its value is what this chart does anyway.
*/}}
{{- define "fgo.ignoredReferenceKeys" -}}
{{- $v := .Values -}}
{{- $env := default dict $v.environment -}}
{{- $su := default dict $v.statusUpdater -}}
{{- $se := default dict $v.statusExporter -}}
{{- $dra := default dict $v.draPlugin -}}
{{- $kp := default dict $dra.kubeletPlugin -}}
{{- $plugin := default dict (default dict $kp.containers).plugin -}}
{{- $out := list -}}
{{- if eq (toString $env.openshift) "true" -}}
{{- $out = append $out "environment.openshift: no SCC roles or ClusterServiceVersion are rendered; grant the node agents' ServiceAccounts (fgo-device-plugin, fgo-dra-plugin, fgo-status-exporter) an SCC allowing hostPath volumes and uid 0 yourself" -}}
{{- end -}}
{{- if not (kindIs "invalid" $env.fakeCSVVersion) }}{{ $out = append $out "environment.fakeCSVVersion: no OpenShift ClusterServiceVersion is rendered" }}{{ end -}}
{{- $ppr := $su.podPatchRbac -}}
{{- if and (not (kindIs "invalid" $ppr)) (ne (toString (default dict $ppr).enabled) "true") -}}
{{- $out = append $out "statusUpdater.podPatchRbac: pods patch is always granted (narrowed by admissionPolicy)" -}}
{{- end -}}
{{- if not (kindIs "invalid" $se.topologyMaxExportInterval) }}{{ $out = append $out "statusExporter.topologyMaxExportInterval: the exporter serves the current record at every scrape" }}{{ end -}}
{{- if not (kindIs "invalid" (default dict $se.kwok).prometheusRule) }}{{ $out = append $out "statusExporter.kwok.prometheusRule: no PrometheusRule is rendered" }}{{ end -}}
{{- if not (kindIs "invalid" $dra.serviceAccount) }}{{ $out = append $out "draPlugin.serviceAccount: the plugin always runs as ServiceAccount fgo-dra-plugin, which the chart creates" }}{{ end -}}
{{- if not (empty $kp.podSecurityContext) }}{{ $out = append $out "draPlugin.kubeletPlugin.podSecurityContext: the pod's security context is fixed (uid 0 without capabilities, RuntimeDefault seccomp)" }}{{ end -}}
{{- if not (kindIs "invalid" $plugin.securityContext) }}{{ $out = append $out "draPlugin.kubeletPlugin.containers.plugin.securityContext: the plugin runs as uid 0 without capabilities, never privileged" }}{{ end -}}
{{- with (default dict $plugin.livenessProbe) -}}
{{- if and .service (ne (toString .service) "liveness") }}{{ $out = append $out "draPlugin.kubeletPlugin.containers.plugin.livenessProbe.service: the probe asks for service liveness, the one the plugin serves" }}{{ end -}}
{{- if and .successThreshold (ne (int .successThreshold) 1) }}{{ $out = append $out "draPlugin.kubeletPlugin.containers.plugin.livenessProbe.successThreshold: a liveness probe's is always 1" }}{{ end -}}
{{- end -}}
{{- if and (not (kindIs "invalid" $plugin.healthcheckPort)) (eq (int $plugin.healthcheckPort) 0) }}{{ $out = append $out "draPlugin.kubeletPlugin.containers.plugin.healthcheckPort=0: the health port and liveness probe stay on (draPlugin.healthcheckPort)" }}{{ end -}}
{{- if not (kindIs "invalid" (default dict $v.computeDomainDraPlugin).healthcheckPort) }}{{ $out = append $out "computeDomainDraPlugin.healthcheckPort: no compute-domain kubelet plugin runs (KWOK channel slices come from the compute-domain-controller)" }}{{ end -}}
{{- if eq (toString (default dict $v.builtinProfiles).enabled) "false" }}{{ $out = append $out "builtinProfiles.enabled=false: the built-in profiles are part of the code" }}{{ end -}}
{{- $whole := dict
  "topologyServer" "no topology server (nvidia-smi reads the node's record)"
  "migFaker" "MIG layouts are applied by the status-updater (docs/mig.md)"
  "nvmlMock" "no mock (nvml-mock) backend"
  "gpuOperator" "NVIDIA's GPU operator is not installed as a subchart"
  "nvidiaDraDriver" "NVIDIA's DRA driver is not installed as a subchart"
  "ubuntu" "no hostpath-init image"
  "computeDomainController" "the compute-domain-controller runs with computeDomainDraPlugin.enabled"
  "kwokComputeDomainDraPlugin" "KWOK channel slices are published by the compute-domain-controller (computeDomainDraPlugin.kwokChannels)"
  "gpu-operator" "values of a subchart that is not installed"
  "nvidia-dra-driver-gpu" "values of a subchart that is not installed" -}}
{{- range $k := keys $whole | sortAlpha -}}
{{- if not (kindIs "invalid" (index $v $k)) }}{{ $out = append $out (printf "%s: %s" $k (index $whole $k)) }}{{ end -}}
{{- end -}}
{{- join "\n" $out -}}
{{- end -}}

{{/*
Reference keys that are set and mapped onto ours, one per line: "<theirs> -> <ours>", or
"<theirs>: <ours> is set too and wins".
*/}}
{{- define "fgo.mappedReferenceKeys" -}}
{{- $c := include "fgo.draPluginValues" . | fromYaml -}}
{{- $kp := default dict (default dict .Values.draPlugin).kubeletPlugin -}}
{{- $plugin := default dict (default dict $kp.containers).plugin -}}
{{- $theirs := dict "resources" "containers.plugin.resources" "healthcheckPort" "containers.plugin.healthcheckPort" -}}
{{- $out := list -}}
{{- range $k := $c.referenceApplied -}}
{{- $out = append $out (printf "draPlugin.kubeletPlugin.%s -> draPlugin.%s" (get $theirs $k | default $k) $k) -}}
{{- end -}}
{{- range $k := $c.referenceOverridden -}}
{{- $out = append $out (printf "draPlugin.kubeletPlugin.%s: draPlugin.%s is set too and wins" (get $theirs $k | default $k) $k) -}}
{{- end -}}
{{- if not (empty $kp.podAnnotations) }}{{ $out = append $out "draPlugin.kubeletPlugin.podAnnotations -> merged into draPlugin.podAnnotations" }}{{ end -}}
{{- if not (empty $kp.updateStrategy) }}{{ $out = append $out "draPlugin.kubeletPlugin.updateStrategy -> the DaemonSet's updateStrategy" }}{{ end -}}
{{- if not (empty $plugin.livenessProbe) }}{{ $out = append $out "draPlugin.kubeletPlugin.containers.plugin.livenessProbe -> the plugin's liveness probe (its timings)" }}{{ end -}}
{{- if not (empty (default dict .Values.draPlugin).imagePullSecrets) }}{{ $out = append $out "draPlugin.imagePullSecrets -> added to the plugin pod's imagePullSecrets" }}{{ end -}}
{{- join "\n" $out -}}
{{- end -}}
