/* An experiment, not part of micafence: how much of the non-restricted neutral request's
 * overhead is left when its two hottest pieces run as native code (issue 20). Built and
 * measured by measure.py beside this file; see bench/results/2026-12-05-issue20-native.txt.
 *
 *   front(scope, wanted, visitors) -> the visitors entry for the scope's peer, or None when a
 *     header named in `wanted` is present, the client is not (str, non-zero port), or the
 *     peer has no entry (decide()'s first steps for a request without signal headers).
 *   lane(scope, wanted, visitors, allow, allowed, plain_paths) -> the entry when front() finds
 *     one that is a Decision micafence lets through with nothing to settle (outcome `allow`,
 *     no client id or residence, not restricted, promotions `allowed`) on a GET or HEAD of a
 *     path in `plain_paths` (path -> True: no sign-up route, not zone-dependent); else None.
 *   CacheSafeSend(send, memo, slow, mark): a send wrapper; on the response start it judges
 *     "may be a page" from the one exact `content-type` line through `memo` (value -> bool),
 *     else calls slow(headers); a page's start message is replaced by mark(message).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <string.h>

static PyObject *str_headers, *str_client, *str_type, *str_start;

static PyObject *front(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) { PyErr_SetString(PyExc_TypeError, "front(scope, wanted, visitors)"); return NULL; }
    PyObject *scope = args[0], *wanted = args[1], *visitors = args[2];
    if (!PyDict_Check(scope)) Py_RETURN_NONE;
    PyObject *headers = PyDict_GetItemWithError(scope, str_headers);
    if (headers == NULL && PyErr_Occurred()) return NULL;
    if (headers != NULL && headers != Py_None) {
        if (!PyList_Check(headers)) Py_RETURN_NONE;
        Py_ssize_t n = PyList_GET_SIZE(headers);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *pair = PyList_GET_ITEM(headers, i);
            if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) Py_RETURN_NONE;
            int found = PySet_Contains(wanted, PyTuple_GET_ITEM(pair, 0));
            if (found < 0) { PyErr_Clear(); Py_RETURN_NONE; }
            if (found) Py_RETURN_NONE;
        }
    }
    PyObject *client = PyDict_GetItemWithError(scope, str_client);
    if (client == NULL || !PyTuple_Check(client) || PyTuple_GET_SIZE(client) < 2) {
        PyErr_Clear(); Py_RETURN_NONE;
    }
    PyObject *peer = PyTuple_GET_ITEM(client, 0), *port = PyTuple_GET_ITEM(client, 1);
    if (!PyUnicode_CheckExact(peer) || !PyLong_CheckExact(port)) Py_RETURN_NONE;
    if (PyLong_AsLong(port) == 0) Py_RETURN_NONE;
    PyObject *entry = PyDict_GetItemWithError(visitors, peer);
    if (entry == NULL) { PyErr_Clear(); Py_RETURN_NONE; }
    Py_INCREF(entry);
    return entry;
}

static PyObject *str_path, *str_method, *str_get, *str_head;

static PyObject *lane(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) { PyErr_SetString(PyExc_TypeError, "lane(scope, wanted, visitors, allow, allowed, plain_paths)"); return NULL; }
    PyObject *entry = front(self, args, 3);
    if (entry == NULL || entry == Py_None) return entry;
    PyObject *scope = args[0];
    /* a Decision: a tuple of at least 17 fields (outcome 0, restricted 10, stance 11,
     * residence 14, client id 16) */
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) < 17
            || PyTuple_GET_ITEM(entry, 0) != args[3] || PyTuple_GET_ITEM(entry, 10) != Py_False
            || PyTuple_GET_ITEM(entry, 11) != args[4] || PyTuple_GET_ITEM(entry, 14) != Py_None
            || PyTuple_GET_ITEM(entry, 16) != Py_None) goto no;
    PyObject *method = PyDict_GetItemWithError(scope, str_method);
    if (method == NULL || !PyUnicode_CheckExact(method)) goto no;
    if (PyUnicode_Compare(method, str_get) != 0 && PyUnicode_Compare(method, str_head) != 0) goto no;
    PyObject *path = PyDict_GetItemWithError(scope, str_path);
    if (path == NULL || !PyUnicode_CheckExact(path)) goto no;
    PyObject *plain = PyDict_GetItemWithError(args[5], path);
    if (plain != Py_True) goto no;
    return entry;
no:
    PyErr_Clear();
    Py_DECREF(entry);
    Py_RETURN_NONE;
}

typedef struct {
    PyObject_HEAD
    PyObject *send, *memo, *slow, *mark;
    vectorcallfunc vectorcall;
} CacheSafeSend;

static int is_content_type(PyObject *name, int *exact) {
    /* 1: the name is content-type (any case); *exact: as ASGI writes it. */
    if (!PyBytes_CheckExact(name)) return -1;
    if (PyBytes_GET_SIZE(name) != 12) return 0;
    const char *s = PyBytes_AS_STRING(name);
    if (memcmp(s, "content-type", 12) == 0) { *exact = 1; return 1; }
    const char *want = "content-type";
    for (int i = 0; i < 12; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z') c = (char)(c + 32);
        if (c != want[i]) return 0;
    }
    *exact = 0;
    return 1;
}

static PyObject *judge(CacheSafeSend *self, PyObject *message) {
    /* New reference to the message to send on. */
    PyObject *headers = PyDict_GetItemWithError(message, str_headers);
    if (headers == NULL && PyErr_Occurred()) return NULL;
    int page = -1;
    if (headers == NULL || headers == Py_None) page = 1;  /* untyped */
    else if (PyList_Check(headers)) {
        Py_ssize_t n = PyList_GET_SIZE(headers), count = 0;
        PyObject *value = NULL;
        int all_exact = 1, odd = 0;
        for (Py_ssize_t i = 0; i < n && !odd; i++) {
            PyObject *pair = PyList_GET_ITEM(headers, i);
            if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) { odd = 1; break; }
            int exact = 1;
            int is = is_content_type(PyTuple_GET_ITEM(pair, 0), &exact);
            if (is < 0) { odd = 1; break; }
            if (is) { count++; value = PyTuple_GET_ITEM(pair, 1); all_exact &= exact; }
        }
        if (!odd && count == 0) page = 1;
        else if (!odd && count == 1 && all_exact && PyBytes_CheckExact(value)) {
            PyObject *known = PyDict_GetItemWithError(self->memo, value);
            if (known == NULL && PyErr_Occurred()) return NULL;
            if (known != NULL) page = PyObject_IsTrue(known);
        }
    }
    if (page < 0) {
        PyObject *verdict = PyObject_CallOneArg(self->slow, headers ? headers : Py_None);
        if (verdict == NULL) return NULL;
        page = PyObject_IsTrue(verdict);
        Py_DECREF(verdict);
        if (page < 0) return NULL;
    }
    if (page) return PyObject_CallOneArg(self->mark, message);
    Py_INCREF(message);
    return message;
}

static PyObject *css_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                PyObject *kwnames) {
    CacheSafeSend *self = (CacheSafeSend *)callable;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "send(message)"); return NULL;
    }
    PyObject *message = args[0];
    if (PyDict_CheckExact(message)) {
        PyObject *type = PyDict_GetItemWithError(message, str_type);
        if (type == NULL && PyErr_Occurred()) return NULL;
        if (type != NULL && PyUnicode_CheckExact(type) &&
                PyUnicode_Compare(type, str_start) == 0) {
            PyObject *out = judge(self, message);
            if (out == NULL) return NULL;
            PyObject *result = PyObject_CallOneArg(self->send, out);
            Py_DECREF(out);
            return result;
        }
    }
    return PyObject_CallOneArg(self->send, message);
}

static PyObject *css_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *send, *memo, *slow, *mark;
    if (!PyArg_ParseTuple(args, "OO!OO", &send, &PyDict_Type, &memo, &slow, &mark)) return NULL;
    CacheSafeSend *self = (CacheSafeSend *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    Py_INCREF(send); Py_INCREF(memo); Py_INCREF(slow); Py_INCREF(mark);
    self->send = send; self->memo = memo; self->slow = slow; self->mark = mark;
    self->vectorcall = css_vectorcall;
    return (PyObject *)self;
}

static int css_traverse(CacheSafeSend *self, visitproc visit, void *arg) {
    Py_VISIT(self->send); Py_VISIT(self->memo); Py_VISIT(self->slow); Py_VISIT(self->mark);
    return 0;
}

static int css_clear(CacheSafeSend *self) {
    Py_CLEAR(self->send); Py_CLEAR(self->memo); Py_CLEAR(self->slow); Py_CLEAR(self->mark);
    return 0;
}

static void css_dealloc(CacheSafeSend *self) {
    PyObject_GC_UnTrack(self);
    css_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject CacheSafeSendType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_lane.CacheSafeSend",
    .tp_basicsize = sizeof(CacheSafeSend),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(CacheSafeSend, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = css_new,
    .tp_traverse = (traverseproc)css_traverse,
    .tp_clear = (inquiry)css_clear,
    .tp_dealloc = (destructor)css_dealloc,
};

static PyMethodDef methods[] = {
    {"front", (PyCFunction)(void (*)(void))front, METH_FASTCALL, "decide()'s first steps"},
    {"lane", (PyCFunction)(void (*)(void))lane, METH_FASTCALL, "front() and the pass checks"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lane", NULL, -1, methods};

PyMODINIT_FUNC PyInit__lane(void) {
    str_headers = PyUnicode_InternFromString("headers");
    str_client = PyUnicode_InternFromString("client");
    str_type = PyUnicode_InternFromString("type");
    str_start = PyUnicode_InternFromString("http.response.start");
    str_path = PyUnicode_InternFromString("path");
    str_method = PyUnicode_InternFromString("method");
    str_get = PyUnicode_InternFromString("GET");
    str_head = PyUnicode_InternFromString("HEAD");
    if (PyType_Ready(&CacheSafeSendType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&CacheSafeSendType);
    PyModule_AddObject(m, "CacheSafeSend", (PyObject *)&CacheSafeSendType);
    return m;
}
