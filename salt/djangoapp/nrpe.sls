{#- NRPE for Nagios, when the pillar turns it on (`djangoapp:monitoring:nrpe`): the
    checks of `djangoapp.monitoring_checks` (derived by djangoapp.derive_settings)
    as commands check_djangoapp_<name>, asked for by the `allowed_hosts` only, with
    no arguments from the network (dont_blame_nrpe=0). The whole configuration file
    is ours. From EPEL on RedHat. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set nrpe = djangoapp.monitoring.nrpe %}

{%- if nrpe.enabled %}

include:
  - .packages
  - .monitoring_checks

djangoapp-nrpe-packages-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.nrpe | json }}
    - require:
      - pkg: djangoapp-base-packages-installed
    # The sudo rules name the user that the package creates.
    - require_in:
      - file: djangoapp-monitoring-sudoers-file-managed

djangoapp-nrpe-config-file-managed:
  file.managed:
    - name: {{ nrpe.conf_file }}
    - source: salt://{{ tpldir }}/files/nrpe.cfg.jinja
    - template: jinja
    - user: root
    # NRPE reads it as its own user.
    - group: {{ nrpe.group }}
    - mode: "0640"
    - context:
        nrpe: {{ nrpe | json }}
        checks: {{ djangoapp.monitoring_checks | json }}
    - require:
      - pkg: djangoapp-nrpe-packages-installed

{%-   if djangoapp.selinux_active %}

djangoapp-nrpe-selinux-run-sudo-boolean:
  selinux.boolean:
    - name: nagios_run_sudo
    - value: true
    - persist: true
    - require_in:
      - service: djangoapp-nrpe-service-running
{%-   endif %}

djangoapp-nrpe-service-running:
  service.running:
    - name: {{ nrpe.service }}
    - enable: true
    - require:
      - file: djangoapp-monitoring-check-script-file-managed
      - file: djangoapp-monitoring-sudoers-file-managed
      - pkg: djangoapp-monitoring-checks-packages-installed
    - watch:
      - file: djangoapp-nrpe-config-file-managed
{%- else %}

include:
  - .off.nrpe
{%- endif %}
