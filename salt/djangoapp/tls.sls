{#- The certificate and key of each app with HTTPS (`tls.mode`), in
    /etc/djangoapp/<app>/tls/ (root only), where Nginx reads them:
      selfsigned: generated once by openssl (remove both files to get new ones);
      provided:   written from the pillar's tls.cert and tls.key, never shown;
      acme:       a self-signed stand-in until certbot has a certificate (acme.sls
                  obtains it once Nginx serves the challenge directory). #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set settings = djangoapp.tls %}
{%- set tls_apps = djangoapp.apps.values() | selectattr("tls.enabled") | list %}

{%- if tls_apps %}

include:
  - .packages
  - .app

djangoapp-tls-packages-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.tls | json }}
    - require:
      - pkg: djangoapp-base-packages-installed
{%-   if tls_apps | selectattr("tls.mode", "equalto", "acme") | list %}

djangoapp-tls-acme-webroot-directory:
  file.directory:
    - name: {{ settings.acme_webroot }}
    - user: root
    - group: root
    - mode: "0755"
    - makedirs: true
{%-   endif %}

{%-   for app in tls_apps %}
{%-     set tls = app.tls %}

djangoapp-{{ app.name }}-tls-directory:
  file.directory:
    - name: {{ tls.dir }}
    - user: root
    - group: root
    - mode: "0700"
    - require:
      - file: djangoapp-{{ app.name }}-directory-{{ app.config_dir }}

{%-     if tls.mode in ["selfsigned", "acme"] %}
{#-       Names Nginx matches by pattern (~regex, *.wildcard.) are left out of the
          certificate's subjectAltName, but for plain wildcards. #}
{%-       set dns_names = app.server_names | reject("match", "^~") | list %}
{%-       set dns_names = dns_names | map("regex_replace", "^\\.", "*.") | list %}
{%-       set common_name = dns_names[0] if dns_names else app.name %}
{%-       set san = dns_names | map("regex_replace", "^", "DNS:") | join(",") %}

djangoapp-{{ app.name }}-tls-certificate-generated:
  cmd.run:
    - name: >-
        openssl req -x509 -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1
        -days {{ settings.selfsigned_days }}
        -subj {{ ("/CN=" ~ common_name) | quote }}
{%-       if san %}
        -addext {{ ("subjectAltName=" ~ san) | quote }}
{%-       endif %}
        -keyout {{ tls.key_file }} -out {{ tls.cert_file }}
    - umask: "077"
    - creates: {{ tls.cert_file }}
    - require:
      - pkg: djangoapp-tls-packages-installed
      - file: djangoapp-{{ app.name }}-tls-directory
{%-     elif tls.mode == "provided" %}

djangoapp-{{ app.name }}-tls-certificate-file-managed:
  file.managed:
    - name: {{ tls.cert_file }}
    - user: root
    - group: root
    - mode: "0644"
    - contents_pillar: djangoapp:apps:{{ app.name }}:tls:cert
    - require:
      - file: djangoapp-{{ app.name }}-tls-directory

djangoapp-{{ app.name }}-tls-key-file-managed:
  file.managed:
    - name: {{ tls.key_file }}
    - user: root
    - group: root
    - mode: "0600"
    - show_changes: false
    - contents_pillar: djangoapp:apps:{{ app.name }}:tls:key
    - require:
      - file: djangoapp-{{ app.name }}-tls-directory
{%-     endif %}
{%-   endfor %}
{%- endif %}
