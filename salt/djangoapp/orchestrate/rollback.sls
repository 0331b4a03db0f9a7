{#- The rolling rollback of an app across the fleet, run on the master:
      salt-run state.orchestrate djangoapp.orchestrate.rollback pillar='{"app": "shop"}' #}
djangoapp-fleet-rollback-rolled-out:
  salt.runner:
    - name: djangoapp_fleet.rollback
    - app: {{ pillar["app"] | json }}
    - batch: {{ pillar.get("batch", 1) | json }}
