"""XML-RPC at `/xmlrpc` (docs/frontends.md#xml-rpc): a hardened parse, then the standard library's
marshalling; every method maps to one core operation.

cyclone's own xmlrpc module does not import on Python 3, and it would parse with whatever the
standard library allows; here a document is refused before unmarshalling if it declares a
DOCTYPE, any entity, or references an entity other than the predefined ones.
"""
from __future__ import annotations

import xml.parsers.expat
import xmlrpc.client
from dataclasses import dataclass
from typing import Any

from restmq import core as corelib
from restmq.names import check_name
from restmq.errors import BadRequest, EmptyQueue, InvalidName, MessageTooLarge

MALFORMED = "malformed XML-RPC request"


class Fault(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Method:
    arity: int
    section: str  # ACL category
    all_queues: bool = False  # the method addresses every queue: a key needs `create`


METHODS = {
    "set": Method(2, "rest:producer"),
    "get": Method(1, "rest:consumer"),
    "take": Method(1, "rest:consumer"),
    "len": Method(1, "rest:consumer"),
    "policy_get": Method(1, "rest:consumer"),
    "policy_set": Method(2, "rest:producer"),
    "status_get": Method(1, "rest:consumer"),
    "status_set": Method(2, "rest:producer"),
    "queues": Method(0, "rest:consumer", all_queues=True),
}


class _Refused(Exception):
    pass


def _refuse(*args):
    raise _Refused()


def check_document(body: bytes) -> None:
    """Parse once with expat and refuse DTDs, entity declarations and references to any entity
    but the five predefined ones (numeric character references are fine); BadRequest."""
    parser = xml.parsers.expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.UnparsedEntityDeclHandler = _refuse
    parser.NotationDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    # Without a DTD expat refuses undefined entities itself; this is the belt to those braces.
    parser.SkippedEntityHandler = _refuse
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    roots: list[str] = []

    def start(name, attributes):
        if not roots:
            roots.append(name)

    parser.StartElementHandler = start
    try:
        parser.Parse(body, True)
    except (_Refused, xml.parsers.expat.ExpatError, ValueError, LookupError):
        # LookupError: a declared encoding Python has no codec for
        raise BadRequest(MALFORMED) from None
    if roots != ["methodCall"]:
        raise BadRequest(MALFORMED)


def parse_call(body: bytes) -> tuple[str, tuple]:
    """The method name and parameters of a methodCall; BadRequest when it is not one."""
    check_document(body)
    try:
        params, method = xmlrpc.client.loads(body, use_builtin_types=True)
    except Exception:  # the unmarshaller raises many types for a bad document
        raise BadRequest(MALFORMED) from None
    if not isinstance(method, str):
        raise BadRequest(MALFORMED)  # a methodResponse, or no methodName
    return method, params


def fault_response(fault: Fault) -> bytes:
    return xmlrpc.client.dumps(xmlrpc.client.Fault(fault.code, fault.message),
                               methodresponse=True).encode("utf-8")


def response(value: Any) -> bytes:
    return xmlrpc.client.dumps((value,), methodresponse=True).encode("utf-8")


def find_method(method_name: str) -> Method:
    """The method's description; Fault 501 for an unknown one (answered without an ACL check)."""
    method = METHODS.get(method_name)
    if method is None:
        raise Fault(501, f"method not found: {method_name}")
    return method


def check_params(method_name: str, params: tuple) -> None:
    """The checks that need no Redis, after the ACL check: arity and types, queue name,
    policy and status values (faults 400)."""
    method = METHODS[method_name]
    if len(params) != method.arity or not all(isinstance(p, str) for p in params):
        raise Fault(400, "invalid arguments")
    if params:
        try:
            check_name(params[0])
        except InvalidName:
            raise Fault(400, "invalid queue name") from None
    if method_name == "policy_set" and params[1] not in corelib.POLICY_NAMES:
        raise Fault(400, "invalid policy")
    if method_name == "status_set" and params[1] not in ("start", "stop"):
        raise Fault(400, "invalid status")


async def checked_params(core: corelib.Core, method_name: str, params: tuple) -> tuple:
    """check_params, where a queue name that breaks only the rule for new names is looked up
    in QUEUESET (Core.admit) before the checks after it; fires with the params to call with."""
    try:
        check_params(method_name, params)
        return params
    except Fault as fault:
        if fault.message != "invalid queue name":
            raise
    try:
        params = (await core.admit(params[0]),) + tuple(params[1:])
    except InvalidName:
        raise Fault(400, "invalid queue name") from None
    check_params(method_name, params)
    return params


async def call(core: corelib.Core, method: str, params: tuple) -> Any:
    """Run a checked method; fires with the value to return, raises Fault(404) when empty."""
    try:
        if method == "set":
            return await core.add(params[0], params[1])
        if method == "get":
            return (await core.hard_get(params[0])).value
        if method == "take":
            return (await core.take(params[0])).value
        if method == "len":
            return await core.length(params[0])
        if method == "policy_get":
            return await core.get_policy(params[0])
        if method == "policy_set":
            await core.set_policy(params[0], params[1])
            return "OK"
        if method == "status_get":
            stored = await core.get_status(params[0])
            return "" if stored is None else ("start" if stored == "1" else "stop")
        if method == "status_set":
            await core.set_status(params[0], params[1] == "start")
            return params[1]
        return await core.queues()
    except EmptyQueue:
        raise Fault(404, "empty queue") from None
    except MessageTooLarge as e:  # over the queue's configured max_message
        raise Fault(e.status, e.reason) from None
    except InvalidName:
        raise Fault(400, "invalid queue name") from None
