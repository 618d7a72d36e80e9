"""Schemathesis hooks of `serving::schemathesis_finds_no_server_error_and_no_schema_violation`.

Loaded through SCHEMATHESIS_HOOKS by that test (tests/it/serving.rs).

The date-range routes (metrics, reconciliation) have two rules that span two query
parameters, which an OpenAPI 3.0 parameter schema cannot state: `from` must not be
after `to`, and the range may span at most `serving.max_range_days` days. The server
answers both with a 400 naming the parameter (asserted by
`serving::malformed_parameters_get_a_400_naming_the_parameter`), so a generated query
that breaks one of them is not schema-valid data the server should accept: such
queries are dropped here, and every other query is kept (a 400 for any other
schema-valid query still fails the positive_data_acceptance check).
"""

import datetime
import os

import schemathesis

# The test passes the server's `serving.max_range_days`.
MAX_RANGE_DAYS = int(os.environ["ADMETRICS_MAX_RANGE_DAYS"])


def _date(value):
    if not isinstance(value, str):
        return None
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        return None


@schemathesis.hook
def filter_query(context, query):
    if not query:
        return True
    first, last = _date(query.get("from")), _date(query.get("to"))
    if first is None or last is None:
        # Not both dates: the server answers 400 naming the parameter, which is what
        # a negative case expects.
        return True
    return first <= last and (last - first).days + 1 <= MAX_RANGE_DAYS
