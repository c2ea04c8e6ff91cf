"""The command routes: `POST /queue` runs a command of the JSON protocol, `POST /xmlrpc` an
XML-RPC call; both through restmq.frontends, which parse and run them on the core.
"""
from __future__ import annotations

from restmq.errors import MissingArgument
from restmq.frontends import jsoncmd, xmlrpc
from restmq.http.base import HTML, JSON, BaseHandler
from restmq.jsontext import json_text


class JsonProtocolHandler(BaseHandler):
    """`/queue`: GET redirects to the help page, POST runs a JSON command (§5)."""

    methods = ("GET", "POST")
    sections = {"POST": "rest:producer"}

    async def get(self):
        self.redirect_to("/static/help.html")

    async def post(self):
        command = self.arg("msg") or self.arg("body")
        if command is None:
            raise MissingArgument("body")
        outcome = await jsoncmd.run(self.ctx.core, command, authorize=self.grant)
        ctype = HTML if outcome.get("error") == "null resultset" else JSON
        self.reply(json_text(outcome), ctype=ctype, crlf=False)


class XmlRpcHandler(BaseHandler):
    """`POST /xmlrpc` (§6): the ACL check waits until the method is known."""

    methods = ("POST",)
    raw_body = True

    async def post(self):
        method, params = xmlrpc.parse_call(self.request.body)
        try:
            described = xmlrpc.find_method(method)
            if self.authkey is None and self.ctx.acl is not None:
                self.ctx.acl.check(described.section, self.request)
            params = await xmlrpc.checked_params(self.ctx.core, method, params)
            await self.grant(None if described.all_queues else params[0])
            body = xmlrpc.response(await xmlrpc.call(self.ctx.core, method, params))
        except xmlrpc.Fault as fault:
            body = xmlrpc.fault_response(fault)
        self.set_header("Content-Type", "text/xml")
        self.finish(body)
