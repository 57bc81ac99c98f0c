"""Scale-out scoring: `humanaes batch` (resumable, exactly-once jobs) and the Ray Serve deployment.

- `inputs`  turns INPUT arguments (files, folders, globs, .txt/.jsonl/.csv/.parquet manifests,
            pyarrow.fs URIs) into (id, path) items.
- `job`     the output directory: the job record (`job.json`), committed Parquet shards, the
            done-id set derived from them, and `--verify`.
- `stages`  the two pipeline stages both engines run: read bytes (CPU), score (model actor).
- `local`   the single-process engine (never imports Ray).
- `ray_engine`  the same stages on Ray Data (`--engine ray`).
- `runner`  the job driver: lock, record, resume, commit, summary.
- `serve`   the HTTP service as a Ray Serve application.

Ray is an optional extra (`pip install 'humanaes[ray]'`); only `ray_engine` and `serve` import it.
"""
