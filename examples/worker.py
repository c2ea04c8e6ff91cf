"""A complete RestMQ worker: claims jobs from `jobs`, keeps their leases alive while it works,
acks what succeeds and retries what fails with backoff. Stop it with Ctrl-C or SIGTERM; it
finishes the jobs under way first.   python examples/worker.py [URL] [QUEUE]"""
import logging
import sys

from restmq.client import Worker


class Printer(Worker):
    queue = "jobs"
    concurrency = 4
    lease = 30

    def work(self, message):
        if message.value == "fail":
            raise ValueError("this job always fails")
        print(f"{message.key} {message.value}\n", end="", flush=True)  # one write per line

    def after(self, message, outcome):
        logging.debug("%s: %s", message.key, outcome)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8888"
    worker = Printer(url, sys.argv[2] if len(sys.argv) > 2 else None)
    worker.run()
    print(f"processed {worker.processed}, failed {worker.failed}", flush=True)
