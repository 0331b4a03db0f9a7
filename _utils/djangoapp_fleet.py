"""
Roles across several minions: which of the web, db, cache and lb parts of the
stack a minion runs (the pillar's ``djangoapp:roles``), and where the others
are. Every minion of a fleet sends ``djangoapp.fleet_member`` (its roles and
its address in ``djangoapp:fleet:network``) to the Salt mine; each reads the
others' from there, so no address is written twice. One minion with the web,
db and cache roles is the single host, which needs no mine.
"""

import ipaddress

from salt.exceptions import CommandExecutionError

__virtualname__ = "djangoapp_fleet"

ROLES = ("web", "db", "cache", "lb")
SINGLE_HOST_ROLES = ("web", "db", "cache")
# The mine function every minion of a fleet sends (pillar: mine_functions).
MINE_FUNCTION = "djangoapp.fleet_member"


def __virtual__():
    return __virtualname__


def is_fleet(config):
    """A minion of a fleet: one with a private network to find the others on."""
    return bool((config.get("fleet") or {}).get("network"))


def mine_wanted(config):
    """The mine function whose answers of every minion ``view`` needs, or None
    on a single host."""
    return MINE_FUNCTION if is_fleet(config) else None


def member(roles, network, addresses):
    """What ``djangoapp.fleet_member`` sends to the mine: the minion's roles and
    its address in ``network`` (None without one)."""
    return {
        "roles": list(roles or SINGLE_HOST_ROLES),
        "address": address_in(network, addresses) if network else None,
    }


def address_in(network, addresses):
    """This minion's address in ``network`` (the first, in the order given), or
    a CommandExecutionError naming the pillar key."""
    net = ipaddress.ip_network(network, strict=True)
    for address in addresses:
        if ipaddress.ip_address(address) in net:
            return address
    raise CommandExecutionError(
        f"djangoapp:fleet:network: no address of this minion is in {network} "
        f"(it has {', '.join(addresses) or 'none'})"
    )


def members_by_role(mine):
    """``{role: [{"id", "address"}, ...]}`` from the mine's answer of
    ``djangoapp.fleet_member`` (minion id -> member), each list in id order.
    Answers that are not a member (a minion whose modules are not synced
    answers an error text) are left out."""
    by_role = {role: [] for role in ROLES}
    for minion in sorted(mine or {}):
        member = mine[minion]
        if not isinstance(member, dict) or not member.get("address"):
            continue
        for role in member.get("roles") or ():
            if role in by_role:
                by_role[role].append({"id": minion, "address": member["address"]})
    return by_role


def the_one(view, role, needed_for):
    """The address of the single minion with ``role``: the app's database or
    cache server; a clear error when the mine knows none or several."""
    found = view["members"][role]
    if len(found) == 1:
        return found[0]["address"]
    if not found:
        problem = "no minion of the fleet has the role {role} in the Salt mine"
    else:
        names = ", ".join(member["id"] for member in found)
        problem = f"several minions have the role {role} ({names}): one serves all"
    raise CommandExecutionError(
        f"djangoapp:roles: {problem.format(role=role)}, and {needed_for} needs it "
        f"(each minion of the fleet sends {MINE_FUNCTION} to the mine: "
        "saltutil.sync_all, then mine.update)"
    )


def view(config, mine, own_id):
    """
    This minion's roles and the fleet as it sees it: ``roles``, ``fleet``
    (whether there is one), ``address`` (its own in the private network,
    from its own mine entry), ``members`` (by role, itself included) and
    ``peers`` (by role, without itself).
    """
    roles = list(config.get("roles") or SINGLE_HOST_ROLES)
    fleet = is_fleet(config)
    if not fleet and sorted(roles) != sorted(SINGLE_HOST_ROLES):
        raise CommandExecutionError(
            "djangoapp:fleet:network is required when djangoapp:roles is not "
            f"{', '.join(SINGLE_HOST_ROLES)} (one host): the minions of a fleet "
            "find each other's addresses in it"
        )
    members = members_by_role(mine if fleet else {})
    own = (mine or {}).get(own_id) if fleet else None
    if fleet and not (isinstance(own, dict) and own.get("address")):
        raise CommandExecutionError(
            f"djangoapp:fleet: this minion ({own_id}) has no {MINE_FUNCTION} entry "
            "in the Salt mine: set the pillar's mine_functions as the README says, "
            "then run saltutil.sync_all and mine.update"
        )
    peers = {
        role: [member for member in found if member["id"] != own_id]
        for role, found in members.items()
    }
    return {
        "roles": roles,
        "fleet": fleet,
        "address": own["address"] if fleet else None,
        "members": members,
        "peers": peers,
    }
