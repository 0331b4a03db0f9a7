{#- Security updates installed automatically, when the pillar turns it on
    (`djangoapp:auto_updates`), by the `backend` of the OS family's parameters:
    unattended-upgrades from the security origin (Debian), dnf-automatic (RedHat;
    `upgrade_type`: CentOS Stream publishes no security advisories, use `default`
    there). Reboots only if `reboot` says so. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set updates = djangoapp.auto_updates %}

{%- if updates.enabled %}

include:
  - .packages

djangoapp-auto-updates-packages-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.auto_updates | json }}
    - require:
      - pkg: djangoapp-base-packages-installed

{%-   if updates.backend == "unattended-upgrades" %}

djangoapp-auto-updates-apt-config-file-managed:
  file.managed:
    - name: {{ updates.apt_config_file }}
    - mode: "0644"
    - contents: |
        // Managed by Salt (djangoapp): security updates, installed every day.
        // After 50unattended-upgrades: its origins are replaced by these.
        APT::Periodic::Update-Package-Lists "1";
        APT::Periodic::Unattended-Upgrade "1";
        APT::Periodic::AutocleanInterval "7";
        #clear Unattended-Upgrade::Allowed-Origins;
        #clear Unattended-Upgrade::Origins-Pattern;
        Unattended-Upgrade::Origins-Pattern {
{%-     for pattern in updates.origins_patterns %}
            "{{ pattern }}";
{%-     endfor %}
        };
        Unattended-Upgrade::Automatic-Reboot "{{ "true" if updates.reboot else "false" }}";
    - require:
      - pkg: djangoapp-auto-updates-packages-installed
    - require_in:
{%-     for timer in updates.timers %}
      - service: djangoapp-auto-updates-{{ timer }}-running
{%-     endfor %}
{%-   elif updates.backend == "dnf-automatic" %}

djangoapp-auto-updates-dnf-automatic-config-options-present:
  ini.options_present:
    - name: {{ updates.dnf_config_file }}
    - sections:
        commands:
          upgrade_type: {{ updates.upgrade_type }}
          download_updates: "yes"
          apply_updates: "yes"
          reboot: {{ "when-needed" if updates.reboot else "never" }}
    - require:
      - pkg: djangoapp-auto-updates-packages-installed
    - require_in:
{%-     for timer in updates.timers %}
      - service: djangoapp-auto-updates-{{ timer }}-running
{%-     endfor %}

{#-     dnf-automatic may have run before us: this record says that the formula
        turned it on, for off/auto_updates.sls. #}

djangoapp-auto-updates-record-file-managed:
  file.managed:
    - name: {{ djangoapp.paths.config_root }}/dnf-automatic-managed
    - makedirs: true
    - mode: "0644"
    - contents: |
        # Managed by Salt (djangoapp): dnf-automatic is on for djangoapp's
        # automatic updates.
{%-   endif %}
{%-   for timer in updates.timers %}

djangoapp-auto-updates-{{ timer }}-running:
  service.running:
    - name: {{ timer }}
    - enable: true
    - require:
      - pkg: djangoapp-auto-updates-packages-installed
{%-   endfor %}
{%- else %}

include:
  - .off.auto_updates
{%- endif %}
