{{/* Labels of every object of the release, less the instance (component objects add it with
their selector labels, see tessera.selector). */}}
{{- define "tessera.baseLabels" -}}
app.kubernetes.io/part-of: tessera
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels of objects that are not one component's (CRDs, RBAC, RuntimeClass, monitoring). */}}
{{- define "tessera.labels" -}}
{{ include "tessera.baseLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "name" "tessera-operator"). */}}
{{- define "tessera.selector" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- end -}}

{{/* Full image reference of one component: (dict "ctx" $ "image" "tessera-operator"). */}}
{{- define "tessera.image" -}}
{{- $tag := default .ctx.Chart.AppVersion .ctx.Values.global.imageTag -}}
{{- printf "%s/%s:%s" .ctx.Values.global.imageRegistry .image $tag -}}
{{- end -}}

{{- define "tessera.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The restrictive container securityContext of the unprivileged components. */}}
{{- define "tessera.restricted" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
