# A model of what hookline's SQLite writer writes per group commit (bench/README.md, "Where the
# time goes now"): the schema of migration 0004 and the statements of an ingest and of a
# recorded result, in groups of 10 ingests and the 10 results of the group before, one
# webhook, run on Python's own SQLite. It counts the WAL frames (pages) each commit writes,
# the cost that grows with the number and the size of the trees a delivery touches, for
# variants of the schema:
#   text       ids as hookline stores them (a prefix and 32 hex digits, 36 characters)
#   blob       ids as 16-byte blobs
#   noattempt  a delivery's first attempt kept in its row: no delivery_attempts row
#   noevtidx   no webhook_logs_by_event index
# Usage: python3 bench/wal_model.py text blob blob-noattempt blob-noattempt-noevtidx
# The CPU figure includes Python's own work and is only a rough guide.
import os, shutil, sqlite3, sys, tempfile, time, uuid
def schema(t):
    return f"""
CREATE TABLE projects (id {t} PRIMARY KEY, name TEXT, created_at INTEGER) STRICT;
CREATE TABLE project_webhooks (id {t} PRIMARY KEY, project_id {t}, event TEXT, target_url TEXT, is_active INTEGER, rate_limit INTEGER) STRICT;
CREATE INDEX project_webhooks_active ON project_webhooks (project_id, event) WHERE is_active = 1;
CREATE TABLE events (id {t} PRIMARY KEY, project_id {t} NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
  event_name TEXT NOT NULL, data TEXT NOT NULL, created_at INTEGER NOT NULL) STRICT;
CREATE TABLE webhook_logs (id {t} PRIMARY KEY, project_id {t} NOT NULL, event TEXT NOT NULL,
  event_id {t} NOT NULL REFERENCES events (id) ON DELETE CASCADE, webhook_id {t} NOT NULL, target_url TEXT NOT NULL,
  status TEXT NOT NULL, response_code INTEGER, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER,
  last_error TEXT, lease_token INTEGER, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
  attempt_base INTEGER NOT NULL DEFAULT 0, kind TEXT NOT NULL DEFAULT 'event') STRICT;
CREATE TABLE delivery_attempts (delivery_id {t} NOT NULL REFERENCES webhook_logs (id) ON DELETE CASCADE,
  number INTEGER NOT NULL, started_at INTEGER NOT NULL, duration_ms INTEGER NOT NULL, response_code INTEGER,
  error_class TEXT, error TEXT, response_body TEXT, PRIMARY KEY (delivery_id, number)) STRICT, WITHOUT ROWID;
CREATE INDEX events_by_project ON events (project_id, id);
CREATE INDEX webhook_logs_due ON webhook_logs (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_logs_by_project ON webhook_logs (project_id, id);
CREATE INDEX webhook_logs_by_event ON webhook_logs (event_id);
"""
DATA = '{"order_id":"b1","customer_id":"cus_8f14e45fceea167a5a36dedd4bea2543","currency":"EUR","total_amount":12990,"items":[{"sku":"SKU-TSHIRT-BLK-M","quantity":2,"unit_price":2495},{"sku":"SKU-HOODIE-GRY-L","quantity":1,"unit_price":5990},{"sku":"SKU-SOCKS-WHT-42","quantity":3,"unit_price":670}],"created_at":"2026-11-30T08:00:00Z","metadata":{"channel":"web","campaign":"black-friday-2026","coupon":"BF26","warehouse":"eu-central-1","note":"leave at the door"}}'
def run(kind, events=20000, group=10):
    path = os.path.join(tempfile.mkdtemp(), f'{kind}.db')
    for s in ('', '-wal', '-shm'):
        try: os.remove(path + s)
        except FileNotFoundError: pass
    c = sqlite3.connect(path, isolation_level=None)
    c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA synchronous=OFF'); c.execute('PRAGMA foreign_keys=ON')
    c.execute('PRAGMA wal_autocheckpoint=0')
    sql = schema('TEXT' if kind.startswith('text') else 'BLOB')
    if 'noevtidx' in kind: sql = sql.replace('CREATE INDEX webhook_logs_by_event ON webhook_logs (event_id);', '')
    c.executescript(sql)
    seq = [0]
    def mk(prefix):
        seq[0] += 1
        u = uuid.UUID(int=(int(time.time() * 1000) << 80) | (seq[0] << 64) | uuid.uuid4().int & ((1 << 64) - 1))
        return prefix + u.hex if kind.startswith('text') else u.bytes
    prj = mk('prj_'); wh = mk('wh_')
    c.execute('INSERT INTO projects VALUES (?, ?, 1)', (prj, 'p'))
    c.execute("INSERT INTO project_webhooks VALUES (?, ?, 'order.created', 'https://a.example/hook', 1, NULL)", (wh, prj))
    c.execute('PRAGMA wal_checkpoint(TRUNCATE)')
    pending = []; commits = 0; frames = 0
    t0 = time.process_time()
    for g in range(events // group):
        c.execute('BEGIN IMMEDIATE')
        made = []
        for i in range(group):
            eid = mk('evt_')
            c.execute('INSERT INTO events VALUES (?, ?, ?, ?, ?)', (eid, prj, 'order.created', DATA, g))
            hooks = c.execute("SELECT id, target_url FROM project_webhooks WHERE project_id = ? AND event = 'order.created' AND is_active = 1", (prj,)).fetchall()
            for hid, url in hooks:
                did = mk('dlv_')
                c.execute("INSERT INTO webhook_logs (id, project_id, event, event_id, webhook_id, target_url, status, attempts, next_attempt_at, lease_token, created_at, updated_at) VALUES (?, ?, 'order.created', ?, ?, ?, 'pending', 0, ?, 7, ?, ?)", (did, prj, eid, hid, url, g + 30000, g, g))
                made.append(did)
        for did in pending:
            c.execute("UPDATE webhook_logs SET status = 'sent', next_attempt_at = NULL, response_code = 200, attempts = attempts + 1, last_error = NULL, lease_token = NULL, updated_at = ? WHERE id = ? AND lease_token = 7", (g, did))
            if 'noattempt' not in kind: c.execute("INSERT INTO delivery_attempts VALUES (?, 1, ?, 3, 200, NULL, NULL, '')", (did, g))
        pending = made
        before = os.path.getsize(path + '-wal')
        c.execute('COMMIT')
        frames += (os.path.getsize(path + '-wal') - before) // 4120
        commits += 1
        if commits % 50 == 0:
            c.execute('PRAGMA wal_checkpoint(TRUNCATE)')
    cpu = time.process_time() - t0
    size = os.path.getsize(path)
    c.close()
    shutil.rmtree(os.path.dirname(path))
    print(f'{kind}: {frames / commits:.1f} WAL frames per commit, {1e6 * cpu / events:.1f} µs CPU per event (Python + SQLite), db {size / 1e6:.1f} MB')
for k in sys.argv[1:]: run(k)
