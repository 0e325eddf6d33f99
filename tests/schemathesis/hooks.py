"""schemathesis hooks for keyhaven's run (loaded through SCHEMATHESIS_HOOKS).

`GET /api/v1/connectedAccounts/{id}/wait` is a long poll: on an account still
INITIATED it answers only after `timeout` seconds (up to 120). Every value the
document allows is valid, but waiting minutes per case would make the run far too
long, so a generated timeout above one second is lowered to one second, and a call
without one (the default is 30 s; the stateful phase follows links without query
parameters) gets one second. Values that are not numbers, or are negative (the cases
meant to be refused), are left as they are, so the parameter's parsing is still
tested.
"""

import schemathesis

LONGEST_WAIT = 1.0


@schemathesis.hook
def map_query(context, query):
    operation = context.operation
    if operation is None or not operation.path.endswith("/wait"):
        return query
    if not query:
        return {"timeout": LONGEST_WAIT}
    if "timeout" not in query:
        query["timeout"] = LONGEST_WAIT
        return query
    value = query.get("timeout")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > LONGEST_WAIT:
        query["timeout"] = LONGEST_WAIT
    return query
