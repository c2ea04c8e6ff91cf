"""The worker of examples/worker.py for Twisted programs: `work` returns a Deferred, here one
that fires a tenth of a second later. The reactor's shutdown (Ctrl-C, SIGTERM) waits for the
jobs under way.   python examples/tx_worker.py [URL] [QUEUE]"""
import sys

from twisted.internet import reactor, task

from restmq.client import TxWorker


class Printer(TxWorker):
    queue = "jobs"
    concurrency = 8

    def work(self, message):
        print(f"{message.key} {message.value}", flush=True)
        return task.deferLater(reactor, 0.1, lambda: None)


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8888"
    worker = Printer(url, sys.argv[2] if len(sys.argv) > 2 else None)
    worker.run()
    print(f"processed {worker.processed}, failed {worker.failed}", flush=True)
