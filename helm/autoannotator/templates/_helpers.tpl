{{/* Names and labels. */}}
{{- define "autoannotator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "autoannotator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "autoannotator.labels" -}}
{{ include "autoannotator.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "autoannotator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "autoannotator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "autoannotator.image" -}}
{{- $root := .root -}}
{{- $tag := default $root.Chart.AppVersion $root.Values.image.tag -}}
{{- $t := $tag -}}
{{- if eq .variant "cuda" -}}{{- $t = default (printf "%s-cuda" $tag) $root.Values.image.cudaTag -}}{{- end -}}
{{- if eq .variant "trainer" -}}{{- $t = default (printf "%s-trainer" $tag) $root.Values.image.trainerTag -}}{{- end -}}
{{- $digest := $root.Values.image.digest -}}
{{- if eq .variant "cuda" -}}{{- $digest = $root.Values.image.cudaDigest -}}{{- end -}}
{{- if eq .variant "trainer" -}}{{- $digest = $root.Values.image.trainerDigest -}}{{- end -}}
{{- if $digest -}}
{{- printf "%s:%s@%s" $root.Values.image.repository $t $digest -}}
{{- else -}}
{{- printf "%s:%s" $root.Values.image.repository $t -}}
{{- end -}}
{{- end -}}

{{/*
Guards: combinations that render but cannot work on a real cluster fail with what to change.
Included once from the ConfigMap template (every install renders it).
*/}}
{{- define "autoannotator.guards" -}}
{{- $v := .Values -}}
{{- if hasPrefix "file://" $v.store.uri -}}
{{- fail (printf "store.uri %q is a file:// URI, but no volume holds it: every pod would write to its own disk. Leave store.uri empty to use the chart's shared volume (store.persistence), or use an object store (s3://, gs://)" $v.store.uri) -}}
{{- end -}}
{{- if and (include "autoannotator.storeOnVolume" .) (not (has "ReadWriteMany" $v.store.persistence.accessModes)) (not $v.store.persistence.existingClaim) (not $v.store.persistence.singleNode) -}}
{{- fail (printf "store.persistence.accessModes %v: a file:// store on a volume without ReadWriteMany can only be mounted on one node, and the trainer and specialists run on several. Use an s3:// store (store.uri), accessModes [ReadWriteMany] with an RWX storage class, or, on a single-node cluster, store.persistence.singleNode=true" $v.store.persistence.accessModes) -}}
{{- end -}}
{{- if gt (int $v.reviewer.replicas) 1 -}}
{{- if ne (default "llm" $v.pipeline.reviewer.mode) "llm" -}}
{{- fail "reviewer.replicas > 1 needs pipeline.reviewer.mode llm: the human review queue is per pod (SQLite), so more replicas would split it across review pages. Use one reviewer for human review" -}}
{{- end -}}
{{- if $v.reviewer.persistence.enabled -}}
{{- fail "reviewer.replicas > 1 needs reviewer.persistence.enabled=false: the volume holds one pod's LLM cache and cannot be shared by several. In llm mode the budget is shared through the spend topic and the cache is only a saving, so each replica keeps its own cache on its pod's disk" -}}
{{- end -}}
{{- end -}}
{{- if and $v.trainer.enabled (gt (int (default 0 $v.trainer.gpu)) 0) (not (and $v.trainer.cudaImage $v.image.trainerTag)) -}}
{{- fail "trainer.gpu > 0, but the trainer image installs CPU-only torch and would leave the GPU idle. Build a trainer image with CUDA torch, set image.trainerTag to it and trainer.cudaImage=true, or set trainer.gpu=0" -}}
{{- end -}}
{{- range $name, $uri := $v.seed.artifacts -}}
{{- $known := false -}}
{{- range $v.specialists -}}{{- if eq .name $name -}}{{- $known = true -}}{{- end -}}{{- end -}}
{{- if not $known -}}
{{- fail (printf "seed.artifacts.%s: no specialist of that name (specialists[].name)" $name) -}}
{{- end -}}
{{- end -}}
{{- if and $v.seed.enabled (not $v.seed.artifacts) -}}
{{- fail "seed.enabled needs seed.artifacts: {specialist name: artifact folder URI}" -}}
{{- end -}}
{{- end -}}

{{/* Consumer group of a service: as KafkaConfig.group (the default prefix keeps the historical names). */}}
{{- define "autoannotator.group" -}}
{{- $base := printf "autoannotator-%s" .name -}}
{{- if eq .root.Values.kafka.topicPrefix "aa." -}}{{- $base -}}{{- else -}}{{- printf "%s%s" .root.Values.kafka.topicPrefix $base -}}{{- end -}}
{{- end -}}

{{/* The store URI every service sees: the configured one, or the shared volume. */}}
{{- define "autoannotator.storeUri" -}}
{{- default "file:///var/lib/autoannotator/store" .Values.store.uri -}}
{{- end -}}

{{- define "autoannotator.storeOnVolume" -}}
{{- if not .Values.store.uri -}}true{{- end -}}
{{- end -}}

{{- define "autoannotator.storeClaim" -}}
{{- default (printf "%s-store" (include "autoannotator.fullname" .)) .Values.store.persistence.existingClaim -}}
{{- end -}}

{{/*
The pipeline config (services/autoannotator/config.py, PipelineConfig). User settings come from
.Values.pipeline; the chart owns where things live (Kafka, store, ports, paths) and the names of the
environment variables that carry secrets, so no secret is ever written into the ConfigMap.
*/}}
{{- define "autoannotator.pipelineConfig" -}}
{{- $v := .Values -}}
{{- $p := deepCopy $v.pipeline -}}
{{- $sec := dict "protocol" $v.kafka.security.protocol -}}
{{- with $v.kafka.security.saslMechanism }}{{- $_ := set $sec "sasl_mechanism" . -}}{{- end -}}
{{- with $v.kafka.security.saslUsername }}{{- $_ := set $sec "sasl_username" . -}}{{- end -}}
{{- if $v.kafka.security.saslPasswordSecret.name -}}
{{- $_ := set $sec "sasl_password_env" "AUTOANNOTATOR_KAFKA_SASL_PASSWORD" -}}
{{- end -}}
{{- if $v.kafka.security.tlsSecret.name -}}
{{- $_ := set $sec "ssl_ca_location" "/etc/autoannotator/kafka-tls/ca.crt" -}}
{{- if $v.kafka.security.tlsSecret.mutual -}}
{{- $_ := set $sec "ssl_certificate_location" "/etc/autoannotator/kafka-tls/tls.crt" -}}
{{- $_ := set $sec "ssl_key_location" "/etc/autoannotator/kafka-tls/tls.key" -}}
{{- end -}}
{{- end -}}
{{- $kafka := dict "topic_prefix" $v.kafka.topicPrefix "partitions" (int $v.kafka.partitions) "replication_factor" (int $v.kafka.replicationFactor) "exactly_once" $v.kafka.exactlyOnce "security" $sec "extra" $v.kafka.extra -}}
{{- $_ := set $p "kafka" $kafka -}}
{{- $_ := set $p "store" (dict "uri" (include "autoannotator.storeUri" .) "options" $v.store.options) -}}
{{- $_ := set $p "metrics" (dict "host" "0.0.0.0" "port" (int $v.metricsPort)) -}}
{{- $_ := set $p "data_dir" "/var/lib/autoannotator" -}}
{{- $specs := list -}}
{{- range $v.specialists -}}
{{- $s := deepCopy (default dict .config) -}}
{{- $_ := set $s "name" .name -}}
{{- if gt (int (default 0 .gpu)) 0 -}}{{- $_ := set $s "provider" "cuda" -}}{{- end -}}
{{- $specs = append $specs $s -}}
{{- end -}}
{{- $_ := set $p "specialists" $specs -}}
{{- $rev := deepCopy (default dict $p.reviewer) -}}
{{- $llm := deepCopy (default dict $rev.llm) -}}
{{- $_ := set $llm "api_key_env" "AUTOANNOTATOR_LLM_API_KEY" -}}
{{- $_ := set $rev "llm" $llm -}}
{{- $human := deepCopy (default dict $rev.human) -}}
{{- $_ := set $human "host" "0.0.0.0" -}}
{{- $_ := set $human "port" (int $v.reviewer.human.service.port) -}}
{{- $_ := set $human "token_env" "AUTOANNOTATOR_REVIEW_TOKEN" -}}
{{- $_ := set $human "queue_path" "/var/lib/autoannotator/review-queue.sqlite" -}}
{{- $_ := set $rev "human" $human -}}
{{- $_ := set $rev "cache_path" "/var/lib/autoannotator/llm-cache.sqlite" -}}
{{- $_ := set $p "reviewer" $rev -}}
{{- $tr := deepCopy (default dict $p.trainer) -}}
{{- $_ := set $tr "enabled" $v.trainer.enabled -}}
{{- $_ := set $tr "pool_path" "/var/lib/autoannotator/pool/pool.sqlite" -}}
{{- $_ := set $p "trainer" $tr -}}
{{- toYaml $p -}}
{{- end -}}

{{/* Environment every service gets: bootstrap, SASL password, store credentials. */}}
{{- define "autoannotator.commonEnv" -}}
- name: AUTOANNOTATOR_KAFKA_BOOTSTRAP
  value: {{ required "kafka.bootstrapServers is required (host:port of an existing Kafka)" .Values.kafka.bootstrapServers | quote }}
- name: HF_HUB_OFFLINE
  value: "1"
{{- with .Values.kafka.security.saslUsername }}
# Read by KEDA's TriggerAuthentication (the services take the username from pipeline.yaml).
- name: AUTOANNOTATOR_KAFKA_SASL_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- with .Values.kafka.security.saslPasswordSecret }}
{{- if .name }}
- name: AUTOANNOTATOR_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "autoannotator.envFrom" -}}
{{- if .Values.store.credentialsSecret }}
envFrom:
  - secretRef:
      name: {{ .Values.store.credentialsSecret }}
{{- end }}
{{- end -}}

{{/*
One Deployment. Arguments (dict): root, component, replicas, args, variant (cpu|cuda|trainer), gpu,
resources, nodeSelector, tolerations, affinity, env (list), volumes (list), mounts (list), ports (list),
strategy (optional), spec (the component's values: priorityClassName, runtimeClassName,
topologySpreadConstraints, terminationGracePeriodSeconds).
*/}}
{{- define "autoannotator.deployment" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $name := printf "%s-%s" (include "autoannotator.fullname" $root) .component -}}
{{- $component := .component -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "autoannotator.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- if not .autoscaled }}
  replicas: {{ .replicas }}
  {{- end }}
  revisionHistoryLimit: 3
  {{- with .strategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "autoannotator.selectorLabels" $root | nindent 6 }}
      app.kubernetes.io/component: {{ .component }}
  template:
    metadata:
      labels:
        {{- include "autoannotator.selectorLabels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .component }}
        autoannotator.io/metrics: "true"
        # Scraped as the "accelerator" label: the SpecialistOnCPU alert compares it with the provider in use.
        autoannotator.io/accelerator: {{ ternary "cuda" "cpu" (gt (int (default 0 .gpu)) 0) }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ include "autoannotator.pipelineConfig" $root | sha256sum }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "autoannotator.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $v.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ default 60 .spec.terminationGracePeriodSeconds }}
      {{- with .spec.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with .spec.runtimeClassName }}
      runtimeClassName: {{ . }}
      {{- end }}
      {{- with .spec.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- range . }}
        {{- $c := deepCopy . }}
        {{- if not $c.labelSelector }}
        {{- $_ := set $c "labelSelector" (dict "matchLabels" (merge (include "autoannotator.selectorLabels" $root | fromYaml) (dict "app.kubernetes.io/component" $component))) }}
        {{- end }}
        {{- list $c | toYaml | nindent 8 }}
        {{- end }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "autoannotator.image" (dict "root" $root "variant" .variant) }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          args:
            {{- toYaml .args | nindent 12 }}
            - --config
            - /etc/autoannotator/pipeline.yaml
            - --metrics-port
            - {{ $v.metricsPort | quote }}
          env:
            {{- include "autoannotator.commonEnv" $root | nindent 12 }}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- include "autoannotator.envFrom" $root | nindent 10 }}
          ports:
            - name: metrics
              containerPort: {{ $v.metricsPort }}
              protocol: TCP
            {{- with .ports }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          # /healthz answers from the start; /readyz only once the model is loaded and the loop runs.
          startupProbe:
            httpGet: {path: /healthz, port: metrics}
            {{- toYaml $v.probes.startup | nindent 12 }}
          livenessProbe:
            httpGet: {path: /healthz, port: metrics}
            {{- toYaml $v.probes.liveness | nindent 12 }}
          readinessProbe:
            httpGet: {path: /readyz, port: metrics}
            {{- toYaml $v.probes.readiness | nindent 12 }}
          securityContext:
            {{- toYaml $v.securityContext | nindent 12 }}
          resources:
            {{- $res := deepCopy (default dict .resources) -}}
            {{- if gt (int (default 0 .gpu)) 0 -}}
            {{- $limits := default dict $res.limits -}}
            {{- $_ := set $limits "nvidia.com/gpu" (int .gpu) -}}
            {{- $_ := set $res "limits" $limits -}}
            {{- end }}
            {{- toYaml $res | nindent 12 }}
          volumeMounts:
            - name: config
              mountPath: /etc/autoannotator/pipeline.yaml
              subPath: pipeline.yaml
              readOnly: true
            - name: tmp
              mountPath: /tmp
            - name: data
              mountPath: /var/lib/autoannotator
            {{- if $v.kafka.security.tlsSecret.name }}
            - name: kafka-tls
              mountPath: /etc/autoannotator/kafka-tls
              readOnly: true
            {{- end }}
            {{- with .mounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: config
          configMap:
            name: {{ include "autoannotator.fullname" $root }}-pipeline
        - name: tmp
          emptyDir:
            sizeLimit: {{ $v.tmpSizeLimit }}
        {{- if .dataVolume }}
        - name: data
          {{- toYaml .dataVolume | nindent 10 }}
        {{- else }}
        - name: data
          emptyDir: {}
        {{- end }}
        {{- if $v.kafka.security.tlsSecret.name }}
        - name: kafka-tls
          secret:
            secretName: {{ $v.kafka.security.tlsSecret.name }}
            defaultMode: 0440
        {{- end }}
        {{- with .volumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with .nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

{{/* The store volume for services reading (specialists) or writing (trainer) a file:// store. */}}
{{- define "autoannotator.storeVolume" -}}
{{- if include "autoannotator.storeOnVolume" . -}}
- name: store
  persistentVolumeClaim:
    claimName: {{ include "autoannotator.storeClaim" . }}
{{- end -}}
{{- end -}}

{{- define "autoannotator.storeMount" -}}
{{- if include "autoannotator.storeOnVolume" .root -}}
- name: store
  mountPath: /var/lib/autoannotator/store
  readOnly: {{ .readOnly }}
{{- end -}}
{{- end -}}

{{/* A metrics Service for one component (what ServiceMonitor and Prometheus scrape). */}}
{{- define "autoannotator.metricsService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "autoannotator.fullname" .root }}-{{ .component }}-metrics
  labels:
    {{- include "autoannotator.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
    autoannotator.io/metrics: "true"
spec:
  type: ClusterIP
  clusterIP: None
  selector:
    {{- include "autoannotator.selectorLabels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  ports:
    - name: metrics
      port: {{ .root.Values.metricsPort }}
      targetPort: metrics
      protocol: TCP
{{- end -}}

{{- define "autoannotator.pdb" -}}
{{- if .root.Values.podDisruptionBudget.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "autoannotator.fullname" .root }}-{{ .component }}
  labels:
    {{- include "autoannotator.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  maxUnavailable: {{ .root.Values.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "autoannotator.selectorLabels" .root | nindent 6 }}
      app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/* What every seed Job container shares: environment, security, resources, mounts. */}}
{{- define "autoannotator.seedContainer" -}}
env:
  {{- include "autoannotator.commonEnv" . | nindent 2 }}
{{- include "autoannotator.envFrom" . }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
resources:
  {{- toYaml .Values.seed.resources | nindent 2 }}
volumeMounts:
  - name: config
    mountPath: /etc/autoannotator/pipeline.yaml
    subPath: pipeline.yaml
    readOnly: true
  - name: tmp
    mountPath: /tmp
  {{- if .Values.kafka.security.tlsSecret.name }}
  - name: kafka-tls
    mountPath: /etc/autoannotator/kafka-tls
    readOnly: true
  {{- end }}
  {{- with (include "autoannotator.storeMount" (dict "root" . "readOnly" false)) }}
  {{- . | nindent 2 }}
  {{- end }}
{{- end -}}
