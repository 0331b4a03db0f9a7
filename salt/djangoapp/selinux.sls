{#- SELinux (RedHat family): lets Nginx (httpd_t) reach each app's Gunicorn socket and
    read its static and media files, certificates and the ACME webroot. Labels are
    policy rules (semanage fcontext) applied with restorecon, so files that releases
    add later get them too. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set paths = djangoapp.paths %}

{%- if djangoapp.selinux_active and djangoapp.apps %}
{#-   (label, the policy's path expression without its `(/.*)?`, type, the directory
      that restorecon relabels) #}
{%-   set fcontexts = [
        ("run-dir", paths.run_root, "httpd_var_run_t", paths.run_root),
        ("base-dir", paths.base_root, "httpd_sys_content_t", paths.base_root),
      ] %}
{%-   if djangoapp.tls_apps %}
{%-     do fcontexts.append(
          ("tls-dir", paths.config_root ~ "/[^/]+/tls", "cert_t", paths.config_root)) %}
{%-     do fcontexts.append(("acme-webroot", djangoapp.tls.acme_webroot,
          "httpd_sys_content_t", djangoapp.tls.acme_webroot)) %}
{%-   endif %}

include:
  - .packages
  - .app

djangoapp-selinux-packages-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.selinux | json }}
    - require:
      - pkg: djangoapp-base-packages-installed

djangoapp-selinux-httpd-can-network-connect-boolean:
  selinux.boolean:
    - name: httpd_can_network_connect
    - value: true
    - persist: true
    - require:
      - pkg: djangoapp-selinux-packages-installed

{%-   for label, expression, sel_type, directory in fcontexts %}

djangoapp-selinux-{{ label }}-fcontext-present:
  selinux.fcontext_policy_present:
    - name: {{ (expression ~ "(/.*)?") | json }}
    - sel_type: {{ sel_type }}
    - require:
      - pkg: djangoapp-selinux-packages-installed

djangoapp-selinux-{{ label }}-fcontext-applied:
  selinux.fcontext_policy_applied:
    - name: {{ directory }}
    - recursive: true
    - onlyif: test -e {{ directory | quote }}
    - require:
      - selinux: djangoapp-selinux-{{ label }}-fcontext-present
      - sls: {{ tpldir }}.app
{%-   endfor %}
{%- endif %}
