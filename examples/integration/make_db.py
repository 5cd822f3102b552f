"""Create lcr.sqlite with a few example rates: python make_db.py"""

import sqlite3
from pathlib import Path

DB = Path(__file__).resolve().parent / "lcr.sqlite"
RATES = [
    ("33", "gw-fr1.example.net", 0.010),
    ("33", "gw-fr2.example.net", 0.012),
    ("336", "gw-mobile.example.net", 0.030),
    ("1", "gw-us.example.net", 0.005),
    ("44", "gw-uk.example.net", 0.008),
]

if __name__ == "__main__":
    DB.unlink(missing_ok=True)
    with sqlite3.connect(DB) as conn:
        conn.execute("CREATE TABLE rates (prefix TEXT NOT NULL, gateway TEXT NOT NULL, cost REAL NOT NULL)")
        conn.execute("CREATE INDEX rates_prefix ON rates (prefix)")
        conn.executemany("INSERT INTO rates VALUES (?, ?, ?)", RATES)
    print(f"wrote {DB} ({len(RATES)} rates)")
