{#- Certificates from an ACME CA (Let's Encrypt unless tls.acme_server says otherwise)
    for the apps with tls.mode acme. Nginx already serves the HTTP-01 challenges from
    the webroot (and HTTPS with a self-signed stand-in), so certbot runs once per
    app, after Nginx; the app's cert.pem and key.pem then point at certbot's files.
    certbot's own timer renews them; its deploy hook reloads Nginx. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set settings = djangoapp.tls %}
{%- set acme_apps = djangoapp.apps.values()
      | selectattr("tls.mode", "equalto", "acme") | list %}

{%- if acme_apps %}

include:
  - .tls
  - .nginx

djangoapp-acme-packages-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.acme | json }}
    - require:
      - pkg: djangoapp-base-packages-installed

djangoapp-acme-renewal-timer-running:
  service.running:
    - name: {{ djangoapp.certbot.renew_timer }}
    - enable: true
    - require:
      - pkg: djangoapp-acme-packages-installed

{%-   for app in acme_apps %}
{%-     set tls = app.tls %}
{%-     set names = app.server_names | reject("match", "^~") | list %}

djangoapp-{{ app.name }}-acme-certificate-obtained:
  cmd.run:
    - name: >-
        certbot certonly --non-interactive --agree-tos --webroot
        --webroot-path {{ settings.acme_webroot | quote }}
        --cert-name {{ app.name }}
{%-     if tls.email %}
        --email {{ tls.email | quote }}
{%-     else %}
        --register-unsafely-without-email
{%-     endif %}
{%-     if settings.acme_server %}
        --server {{ settings.acme_server | quote }}
{%-     endif %}
        --deploy-hook {{ ("systemctl reload " ~ djangoapp.nginx.service) | quote }}
{%-     for name in names %}
        --domain {{ name | quote }}
{%-     endfor %}
    - creates: {{ tls.acme_live_dir }}/fullchain.pem
    - env: {{ djangoapp.proxy_env | json }}
    - require:
      - pkg: djangoapp-acme-packages-installed
      - service: djangoapp-nginx-service-running

{%-     for link, target in [(tls.cert_file, "fullchain.pem"), (tls.key_file, "privkey.pem")] %}

djangoapp-{{ app.name }}-acme-{{ target.split(".")[0] }}-linked:
  file.symlink:
    - name: {{ link }}
    - target: {{ tls.acme_live_dir }}/{{ target }}
    - force: true
    - require:
      - cmd: djangoapp-{{ app.name }}-acme-certificate-obtained
    - watch_in:
      - service: djangoapp-acme-nginx-service-reloaded
{%-     endfor %}
{%-   endfor %}

djangoapp-acme-nginx-service-reloaded:
  service.running:
    - name: {{ djangoapp.nginx.service }}
    - reload: true
{%- endif %}
