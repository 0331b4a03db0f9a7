{#- Rotation of the apps' logs switched off (`djangoapp:logrotate:enabled: false`,
    and clean.sls): our logrotate file removed. The logrotate timer belongs to the
    distribution (it rotates the system's logs) and keeps running; the package
    stays installed. Nothing to do on a host that never had the file. #}

djangoapp-logrotate-config-file-absent:
  file.absent:
    - name: /etc/logrotate.d/djangoapp
