"""Job creation under load: N concurrent clients create jobs on a real `tlscale serve` (uvicorn on loopback,
no dispatcher, so only the API and its store are measured), with SQLite (WAL) and with PostgreSQL in the same
run. Prints create latency p50/p99 and jobs/s for each store.

    .venv/bin/python bench/service_create.py [--clients 50 --jobs 1000]

PostgreSQL: a throwaway cluster started like the tests' fixture (needs the PostgreSQL 15 server binaries).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(url_or_none: str | None, clients: int, jobs: int) -> dict:
    import httpx

    from tests.service.conftest import start_server
    from tests.service.test_api import sst2_tsv, tiny_job_spec, upload

    server = start_server(Path(tempfile.mkdtemp(prefix="tlscale-bench-")), dispatch=False, url=url_or_none)
    try:
        team = server.team("bench")
        from tlscale.service.teams import set_quotas

        set_quotas(server.store, "bench", max_queued=jobs * 2)
        files = [upload(team, name, sst2_tsv(0, 40)).json()["id"] for name in ("t.tsv", "d.tsv")]
        body = {"spec": tiny_job_spec(*files)}
        latencies: list[float] = []
        errors: list[int] = []
        per_client = jobs // clients

        def client_loop():
            with httpx.Client(base_url=server.url, headers=team.headers, timeout=120) as http:
                for _ in range(per_client):
                    start = time.perf_counter()
                    response = http.post("/v1/fine_tuning/jobs", json=body)
                    latencies.append(time.perf_counter() - start)
                    if response.status_code != 201:
                        errors.append(response.status_code)

        threads = [threading.Thread(target=client_loop) for _ in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        listed, after = 0, None
        while True:
            page = team.get("/v1/fine_tuning/jobs", params={"limit": 100, **({"after": after} if after else {})}).json()
            listed += len(page["data"])
            if not page["has_more"]:
                break
            after = page["data"][-1]["id"]
        quantiles = statistics.quantiles(latencies, n=100)
        return {"jobs": len(latencies), "errors": len(errors), "listed": listed, "jobs_per_s": len(latencies) / wall,
                "p50_ms": quantiles[49] * 1000, "p99_ms": quantiles[98] * 1000}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    from tests.service.conftest import throwaway_postgres

    results = {"sqlite": run(None, args.clients, args.jobs)}
    with throwaway_postgres() as url:
        results["postgresql"] = run(url, args.clients, args.jobs)
    for store, r in results.items():
        print(f"{store:>10}: {r['jobs']} creates from {args.clients} clients, {r['errors']} errors, {r['listed']} listed; "
              f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, {r['jobs_per_s']:.1f} jobs/s")
    print(f"PostgreSQL / SQLite jobs/s: {results['postgresql']['jobs_per_s'] / results['sqlite']['jobs_per_s']:.2f}")


if __name__ == "__main__":
    main()
