"""Create lcr.sqlite with a few example rates: python make_db.py"""

import sqlite3
from pathlib import Path

DB = Path(__file__).resolve().parent / "lcr.sqlite"
# Gateways: PLACEHOLDERS on loopback, so the example runs on one machine with
# sipp standing in for them (`sipp -sn uas -i 127.0.0.1 -p 5091`). Put your
# carriers' addresses here.
RATES = [
    ("33", "127.0.0.1:5091", 0.010),
    ("33", "127.0.0.1:5092", 0.012),
    ("336", "127.0.0.1:5093", 0.030),
    ("1", "127.0.0.1:5094", 0.005),
    ("44", "127.0.0.1:5095", 0.008),
]

if __name__ == "__main__":
    DB.unlink(missing_ok=True)
    with sqlite3.connect(DB) as conn:
        conn.execute("CREATE TABLE rates (prefix TEXT NOT NULL, gateway TEXT NOT NULL, cost REAL NOT NULL)")
        conn.execute("CREATE INDEX rates_prefix ON rates (prefix)")
        conn.executemany("INSERT INTO rates VALUES (?, ?, ?)", RATES)
    print(f"wrote {DB} ({len(RATES)} rates)")
