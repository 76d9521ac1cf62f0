# Run from a checkout of main at ba0ae5d (schema version 1): PYTHONPATH=. python tests/data/make_catalog_v1.py tests/data/catalog_v1
"""Write tests/data/catalog_v1/ with the code on main (schema version 1): a catalog.db and its index files."""
import os, sys, shutil, numpy as np
sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "tests")]
from indexer.store import Store, UpsertRow
from indexer.catalog import Job, JobError
from indexer_helpers import FakeBinding
out = sys.argv[1]
shutil.rmtree(out, ignore_errors=True)
rng = np.random.default_rng(42)
with Store(out) as store:
    a = store.create_collection("photos", FakeBinding(dim=8, name="enc-a", digest="a" * 32))
    b = store.create_collection("other", FakeBinding(dim=4, name="enc-b", digest="b" * 32), "hnsw16")
    rows = []
    for i in range(40):
        v = rng.standard_normal(8).astype(np.float32); v /= np.linalg.norm(v)
        meta = {"n": i, "f": i / 4, "tag": "even" if i % 2 == 0 else "odd", "ok": i % 3 == 0,
                "exif": {"iso": 100 * (i % 5), "make": "Ünïcode ☃" if i % 7 == 0 else "canon"},
                "tags": ["x", "y"], "none": None}
        if i == 5:
            meta["long"] = "z" * 1000
        rows.append(UpsertRow(uri=f"/img/{i:03d}.jpg", sha256=f"{i:064x}", width=100 + i, height=200 + 2 * i,
                              vector=v, meta=meta, caption=f"caption {i}" if i % 4 == 0 else None))
    a.upsert(rows[:30])
    a.upsert(rows[30:])
    a.delete(ids=[3, 4])                      # tombstones, not purged
    a.delete(uris=["/img/010.jpg"])
    b.upsert([UpsertRow(uri=f"b{i}", sha256=f"{1000 + i:064x}", width=1, height=1,
                        vector=np.eye(4, dtype=np.float32)[i % 4], meta={"i": i}) for i in range(6)])
    b.rebuild()                               # purges nothing (no tombstones) but records purged_rev
    with store.catalog.session() as s:
        job = Job(collection_id=a.id, sources=["/img"], state="done", added=40, seen=41, failed=1)
        s.add(job); s.flush()
        s.add(JobError(job_id=job.id, uri="/img/bad.jpg", reason="truncated image"))
    a.save_index(); b.save_index()
print("ok")
