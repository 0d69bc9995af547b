#!/usr/bin/python3
# The RDS IAM tokens botocore's generate_db_auth_token makes, for the cases on
# stdin (one per line, tab-separated: access key id, secret key, session token
# or "-", region, host, port, user, Unix time), one token per line on stdout.
# botocore's clock is frozen at each case's time. Run with Debian's python3
# and python3-botocore (scripts/install-deps); any failure exits non-zero.
import sys

sys.path.insert(0, '/usr/lib/python3/dist-packages')  # Debian's botocore, not another one on the path
import datetime

import botocore
import botocore.auth
import botocore.session

frozen = None


class FrozenDatetime(datetime.datetime):
    @classmethod
    def utcnow(cls):
        return frozen

    @classmethod
    def now(cls, tz=None):
        return frozen if tz is None else frozen.replace(tzinfo=datetime.timezone.utc).astimezone(tz)


botocore.auth.datetime.datetime = FrozenDatetime
sys.stdin.reconfigure(encoding='utf-8')
sys.stdout.reconfigure(encoding='utf-8')
print('botocore', botocore.__version__, botocore.__file__, file=sys.stderr)

for line in sys.stdin:
    line = line.rstrip('\n')
    if not line:
        continue
    key, secret, token, region, host, port, user, when = line.split('\t')
    frozen = FrozenDatetime.utcfromtimestamp(int(when))
    session = botocore.session.get_session()
    session.set_credentials(key, secret, None if token == '-' else token)
    client = session.create_client('rds', region_name=region)
    print(client.generate_db_auth_token(host, int(port), user))
