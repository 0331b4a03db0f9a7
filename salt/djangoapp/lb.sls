{#- The lb role: HAProxy in front of the web minions of the fleet (found in the Salt
    mine), one backend per app chosen by its server names, each web minion checked
    through its own Nginx at the app's health path. lb.json tells djangoapp.lb_server
    (drain, ready) where the runtime API is and which backend serves which app. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set lb = djangoapp.lb %}

{%- if "lb" in djangoapp.fleet.roles %}

include:
  - .packages

djangoapp-lb-haproxy-package-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.haproxy | json }}
    - require:
      - pkg: djangoapp-base-packages-installed

{%-   set tls_backends = djangoapp.lb_backends | selectattr("tls") | list %}
{%-   if tls_backends %}

djangoapp-lb-tls-directory:
  file.directory:
    - name: {{ lb.tls_dir }}
    - user: root
    - group: root
    - mode: "0700"
    - require:
      - pkg: djangoapp-lb-haproxy-package-installed
    - require_in:
      - file: djangoapp-lb-haproxy-config-file-managed
{%-   endif %}
{%-   for backend in tls_backends %}
{%-     set cert_file = lb.tls_dir ~ "/" ~ backend.app ~ ".pem" %}
{%-     if backend.tls_mode == "selfsigned" %}
{#-       As tls.sls: names Nginx would match by pattern are left out of the SAN. #}
{%-       set dns_names = backend.server_names | reject("match", "^~") | list %}
{%-       set dns_names = dns_names | map("regex_replace", "^\\.", "*.") | list %}
{%-       set san = dns_names | map("regex_replace", "^", "DNS:") | join(",") %}

djangoapp-lb-{{ backend.app }}-tls-certificate-generated:
  cmd.run:
    - name: >-
        openssl req -x509 -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1
        -days {{ djangoapp.tls.selfsigned_days }}
        -subj {{ ("/CN=" ~ (dns_names[0] if dns_names else backend.app)) | quote }}
{%-       if san %}
        -addext {{ ("subjectAltName=" ~ san) | quote }}
{%-       endif %}
        -keyout {{ cert_file }}.key -out {{ cert_file }}
    - umask: "077"
    - creates: {{ cert_file }}
    - require:
      - file: djangoapp-lb-tls-directory
    - require_in:
      - file: djangoapp-lb-haproxy-config-file-managed
    - watch_in:
      - service: djangoapp-lb-haproxy-service-running
{%-     else %}

djangoapp-lb-{{ backend.app }}-tls-certificate-file-managed:
  file.managed:
    - name: {{ cert_file }}
    - contents_pillar: djangoapp:apps:{{ backend.app }}:tls:cert
    - mode: "0600"
    - show_changes: false
    - require:
      - file: djangoapp-lb-tls-directory
    - require_in:
      - file: djangoapp-lb-haproxy-config-file-managed
    - watch_in:
      - service: djangoapp-lb-haproxy-service-running

djangoapp-lb-{{ backend.app }}-tls-key-file-managed:
  file.managed:
    - name: {{ cert_file }}.key
    - contents_pillar: djangoapp:apps:{{ backend.app }}:tls:key
    - mode: "0600"
    - show_changes: false
    - require:
      - file: djangoapp-lb-tls-directory
    - require_in:
      - file: djangoapp-lb-haproxy-config-file-managed
    - watch_in:
      - service: djangoapp-lb-haproxy-service-running
{%-     endif %}
{%-   endfor %}

djangoapp-lb-haproxy-config-file-managed:
  file.managed:
    - name: {{ lb.config_file }}
    - source: salt://{{ tpldir }}/files/haproxy.cfg.jinja
    - template: jinja
    - mode: "0644"
    # HAProxy reads the candidate before it replaces the file in place.
    - check_cmd: haproxy -c -f
    - context:
        lb: {{ lb | json }}
        backends: {{ djangoapp.lb_backends | json }}
        tls: {{ djangoapp.tls | json }}
        tls_dir: {{ lb.tls_dir | json }}
    - require:
      - pkg: djangoapp-lb-haproxy-package-installed

djangoapp-lb-settings-file-serialized:
  file.serialize:
    - name: {{ djangoapp.paths.config_root }}/lb.json
    - serializer: json
    - makedirs: true
    - mode: "0644"
    - dataset:
        socket: {{ lb.socket | json }}
        drain_timeout: {{ djangoapp.fleet.drain_timeout }}
        backends:
{%-   for backend in djangoapp.lb_backends %}
          {{ backend.app }}: {{ backend.name }}
{%-   endfor %}

djangoapp-lb-haproxy-service-running:
  service.running:
    - name: haproxy
    - enable: true
    # A reload hands the listening sockets to new processes: no connection refused.
    - reload: true
    - watch:
      - file: djangoapp-lb-haproxy-config-file-managed
{%- else %}

include:
  - .off.lb
{%- endif %}
