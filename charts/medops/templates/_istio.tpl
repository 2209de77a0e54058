{{/* HTTP routes of the gateway's VirtualServices, from .Values.routing. */}}
{{- define "medops.istioRoutes" -}}
{{- $host := include "medops.gatewayHost" . }}
{{- $svc := .Values.gateway.service -}}
# gRPC carries the model name in the message body, so the gateway routes it.
- name: grpc
  match:
    - port: {{ $svc.grpcPort }}
  route:
    - destination:
        host: {{ $host }}
        port:
          number: {{ $svc.grpcPort }}
{{- if eq .Values.routing.mode "mesh" }}
# An explicit variant (testing override) passes through untouched.
- name: variant-override
  match:
    - headers:
        x-medops-variant:
          regex: ".+"
  route:
    - destination:
        host: {{ $host }}
        port:
          number: {{ $svc.httpPort }}
# A routing key (study or user) makes the assignment sticky: the gateway hashes it, so keyed
# requests keep the same variant instead of Istio's per-request draw.
- name: sticky-route-key
  match:
    - headers:
        x-medops-route-key:
          regex: ".+"
  route:
    - destination:
        host: {{ $host }}
        port:
          number: {{ $svc.httpPort }}
{{- range $model, $spec := .Values.routing.models }}
- name: {{ $model }}
  match:
    - uri:
        exact: /v2/models/{{ $model }}
    - uri:
        prefix: /v2/models/{{ $model }}/
  route:
    {{- if eq (default "single" $spec.strategy) "bandit" }}
    # Thompson sampling needs live rewards: the gateway picks the arm.
    - destination:
        host: {{ $host }}
        port:
          number: {{ $svc.httpPort }}
    {{- else }}
    {{- range $spec.variants }}
    {{- /* Variants with weight 0 (shadow-only, blue/green standby) get no live traffic. */}}
    {{- $weight := int (ternary .weight 0 (hasKey . "weight")) }}
    {{- if gt $weight 0 }}
    - destination:
        host: {{ $host }}
        port:
          number: {{ $svc.httpPort }}
      weight: {{ $weight }}
      headers:
        request:
          set:
            x-medops-variant: {{ .name }}
    {{- end }}
    {{- end }}
    {{- end }}
  {{- with $spec.shadow }}
  # The shadow copy arrives with "-shadow" appended to its Host; its answer is discarded.
  mirror:
    host: {{ $host }}
    port:
      number: {{ $svc.httpPort }}
  mirrorPercentage:
    value: {{ ternary .percent 100 (hasKey . "percent") }}
  {{- end }}
{{- end }}
{{- end }}
- name: default
  route:
    - destination:
        host: {{ $host }}
        port:
          number: {{ $svc.httpPort }}
{{- end }}
