"""The command routes: `POST /queue` runs a command of the JSON protocol, `POST /xmlrpc` an
XML-RPC call; both through restmq.frontends, which parse and run them on the core.
"""
from __future__ import annotations

from restmq.errors import MissingArgument
from restmq.frontends import jsoncmd, xmlrpc
from restmq.http.base import EVERY_QUEUE, HTML, JSON, NO_QUEUE, BaseHandler, FromBody
from restmq.jsontext import json_text


class JsonProtocolHandler(BaseHandler):
    """`/queue`: GET redirects to the help page, POST runs a JSON command
    (docs/frontends.md#json-protocol)."""

    methods = ("GET", "POST")
    sections = {"POST": "rest:producer"}
    queue_from = {"GET": NO_QUEUE, "POST": FromBody()}

    async def get(self):
        self.redirect_to("/static/help.html")

    async def resolve_queue(self) -> str | None:
        """The command's queue; a command that names none usable is answered here."""
        text = self.arg("msg") or self.arg("body")
        if text is None:
            raise MissingArgument("body")
        self.command, refusal = await jsoncmd.check(self.ctx.core, text)
        if self.command is None:
            self.answer(refusal)  # finished: the base handler has nothing to authorize
            return None
        return self.command["queue"]

    async def post(self):
        self.answer(await jsoncmd.execute(self.ctx.core, self.command))

    def answer(self, outcome: dict) -> None:
        ctype = HTML if outcome.get("error") == "null resultset" else JSON
        self.reply(json_text(outcome), ctype=ctype, crlf=False)


class XmlRpcHandler(BaseHandler):
    """`POST /xmlrpc` (docs/frontends.md#xml-rpc): the ACL check waits until the method is
    known, so the section is the called method's rather than the route's."""

    methods = ("POST",)
    sections: dict[str, str] = {}
    queue_from = {"POST": FromBody(checks_acl=True)}
    raw_body = True

    async def resolve_queue(self) -> str | None:
        """The called method's queue, after its ACL check; a fault is answered here."""
        method, params = xmlrpc.parse_call(self.request.body)
        try:
            described = xmlrpc.find_method(method)
            self.check_acl(described.section)
            params = await xmlrpc.checked_params(self.ctx.core, method, params)
        except xmlrpc.Fault as fault:
            self.answer(xmlrpc.fault_response(fault))  # finished: nothing to authorize
            return None
        self.call = method, params
        return EVERY_QUEUE if described.all_queues else params[0]

    async def post(self):
        try:
            body = xmlrpc.response(await xmlrpc.call(self.ctx.core, *self.call))
        except xmlrpc.Fault as fault:
            body = xmlrpc.fault_response(fault)
        self.answer(body)

    def answer(self, body: bytes) -> None:
        self.set_header("Content-Type", "text/xml")
        self.finish(body)
