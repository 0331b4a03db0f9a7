#!/bin/sh
# Removes from a firewalld zone what djangoapp's firewall.sls added to it, and
# nothing else: the zone's ports named `port:PORT/PROTOCOL`, the rich rules that let
# one source address reach a port named `rule:PORT/PROTOCOL` (the monitoring
# agents), and the ones that let packets from a source port named
# `source-rule:PORT/PROTOCOL` in (the Salt master), in the form firewall.sls writes
# them. The permanent configuration is changed (firewall-offline-cmd when firewalld
# is not running). The last line is for Salt's `stateful` cmd.script.
#
#   firewalld-remove-ours.sh ZONE [port:22/tcp ...] [rule:5666/tcp ...] [source-rule:4505/tcp ...]
set -eu
set -f

zone="$1"
shift

if ! command -v firewall-cmd >/dev/null 2>&1; then
    echo "changed=no comment='firewalld is not installed'"
    exit 0
fi
if firewall-cmd --state >/dev/null 2>&1; then
    fw="firewall-cmd --permanent --zone=$zone"
else
    fw="firewall-offline-cmd --zone=$zone"
fi

ports=0
rich_rules=0
rules="$($fw --list-rich-rules)"
for item in "$@"; do
    kind="${item%%:*}"
    spec="${item#*:}"
    port="${spec%/*}"
    protocol="${spec#*/}"
    case "$kind" in
        port)
            if $fw --query-port="$spec" >/dev/null 2>&1; then
                $fw --remove-port="$spec" >/dev/null
                ports=$((ports + 1))
            fi
            ;;
        rule | source-rule)
            match="port"
            if [ "$kind" = source-rule ]; then
                match="source-port"
            fi
            pattern="^rule family=\"ipv[46]\" source address=\"[^\"]+\" $match port=\"$port\" protocol=\"$protocol\" accept\$"
            matches="$(printf '%s\n' "$rules" | grep -E "$pattern" || true)"
            while IFS= read -r rule; do
                if [ -n "$rule" ]; then
                    $fw --remove-rich-rule="$rule" >/dev/null
                    rich_rules=$((rich_rules + 1))
                fi
            done <<RULES
$matches
RULES
            ;;
        *)
            echo "firewalld-remove-ours.sh: unknown item '$item'" >&2
            exit 2
            ;;
    esac
done

if [ $((ports + rich_rules)) -gt 0 ]; then
    echo "changed=yes comment='removed $ports ports and $rich_rules rich rules from zone $zone'"
else
    echo "changed=no comment='nothing of ours in zone $zone'"
fi
