// radixrt._radix_core: the hot loops of radixrt/cache/radix_cache.py.
//
// Plain pybind11 + numpy buffers (no torch headers) so it builds in seconds. Results must be
// identical to the numpy reference path in radix_cache.py (common_prefix_len_ref, walk_ref);
// tests/unit/test_radix_cache.py compares the two.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace py = pybind11;

namespace {

using I32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using I32ArrayNoCast = py::array_t<int32_t, py::array::c_style>;

// Interned attribute names, created once at import. Deliberately leaked: freeing them in a
// static destructor would run after the interpreter is gone.
PyObject* g_children = nullptr;
PyObject* g_key = nullptr;
PyObject* g_pages = nullptr;

// Common prefix of a[0:n] and b[0:n]. memcmp over 1 KiB blocks uses glibc's SIMD compare and
// skips the equal bulk fast; the scalar loop only scans the block holding the first mismatch.
inline int64_t common_prefix(const int32_t* a, const int32_t* b, int64_t n) {
    constexpr int64_t kBlock = 256;
    int64_t i = 0;
    while (i + kBlock <= n && std::memcmp(a + i, b + i, kBlock * sizeof(int32_t)) == 0) {
        i += kBlock;
    }
    while (i < n && a[i] == b[i]) {
        ++i;
    }
    return i;
}

int64_t common_prefix_len(const I32Array& a, const I32Array& b, int64_t page_size) {
    if (a.ndim() != 1 || b.ndim() != 1) {
        throw std::invalid_argument("common_prefix_len expects 1-D arrays");
    }
    if (page_size < 1) {
        throw std::invalid_argument("page_size must be >= 1");
    }
    const int64_t n = std::min<int64_t>(a.shape(0), b.shape(0));
    const int64_t m = common_prefix(a.data(), b.data(), n);
    return m - m % page_size;
}

// A node attribute that must be a 1-D C-contiguous int32 array (node.key, node.pages).
I32ArrayNoCast int32_attr(PyObject* node, PyObject* name) {
    py::object obj = py::reinterpret_steal<py::object>(PyObject_GetAttr(node, name));
    if (!obj) {
        throw py::error_already_set();
    }
    if (!py::isinstance<I32ArrayNoCast>(obj)) {
        throw std::invalid_argument("node arrays must be C-contiguous int32");
    }
    auto arr = py::reinterpret_steal<I32ArrayNoCast>(obj.release());
    if (arr.ndim() != 1) {
        throw std::invalid_argument("node arrays must be 1-D");
    }
    return arr;
}

// The dict key under which a child starting at tokens[pos] is stored: the first token as an
// int when page_size == 1, else the first page's tokens as a tuple of ints.
py::object child_key(const int32_t* tokens, int64_t pos, int64_t page_size) {
    if (page_size == 1) {
        return py::reinterpret_steal<py::object>(PyLong_FromLong(tokens[pos]));
    }
    PyObject* tup = PyTuple_New(page_size);
    if (tup == nullptr) {
        throw py::error_already_set();
    }
    py::object owner = py::reinterpret_steal<py::object>(tup);
    for (int64_t i = 0; i < page_size; ++i) {
        PyObject* v = PyLong_FromLong(tokens[pos + i]);
        if (v == nullptr) {
            throw py::error_already_set();
        }
        PyTuple_SET_ITEM(tup, i, v);  // steals v
    }
    return owner;
}

// Follow tokens down from root: one dict probe plus one prefix compare per node, with no
// Python bytecode in between. Returns (path, pos, partial) exactly like walk_ref: the nodes
// whose keys matched (the last one only partially when partial > 0), the matched token count
// (a page multiple), and how many tokens of the last node matched when the match ends inside
// it (else 0). The caller splits that node; this function never mutates the tree.
py::tuple walk(py::handle root, const I32Array& tokens, int64_t page_size) {
    if (tokens.ndim() != 1) {
        throw std::invalid_argument("walk expects a 1-D token array");
    }
    if (page_size < 1) {
        throw std::invalid_argument("page_size must be >= 1");
    }
    const int32_t* t = tokens.data();
    const int64_t n = tokens.shape(0) - tokens.shape(0) % page_size;
    py::list path;
    int64_t pos = 0;
    int64_t partial = 0;
    py::object node = py::reinterpret_borrow<py::object>(root);
    while (pos < n) {
        py::object children = py::reinterpret_steal<py::object>(PyObject_GetAttr(node.ptr(), g_children));
        if (!children) {
            throw py::error_already_set();
        }
        if (!PyDict_Check(children.ptr())) {
            throw std::invalid_argument("node.children must be a dict");
        }
        py::object k = child_key(t, pos, page_size);
        PyObject* child = PyDict_GetItemWithError(children.ptr(), k.ptr());  // borrowed
        if (child == nullptr) {
            if (PyErr_Occurred()) {
                throw py::error_already_set();
            }
            break;
        }
        py::object child_obj = py::reinterpret_borrow<py::object>(child);
        I32ArrayNoCast key = int32_attr(child, g_key);
        const int64_t klen = key.shape(0);
        int64_t m = common_prefix(key.data(), t + pos, std::min(klen, n - pos));
        m -= m % page_size;
        if (m == 0) {  // only with a corrupt child key; stop like walk_ref
            break;
        }
        path.append(child_obj);
        pos += m;
        if (m < klen) {
            partial = m;
            break;
        }
        node = std::move(child_obj);
    }
    return py::make_tuple(std::move(path), pos, partial);
}

// np.concatenate([n.pages for n in path]) in one call: a single allocation and one memcpy per
// node, without building the Python list (matters for long chains, e.g. a chat's turns).
py::array_t<int32_t> gather_pages(const py::list& path) {
    std::vector<I32ArrayNoCast> parts;
    parts.reserve(path.size());
    py::ssize_t total = 0;
    for (py::handle node : path) {
        parts.push_back(int32_attr(node.ptr(), g_pages));
        total += parts.back().shape(0);
    }
    py::array_t<int32_t> out(total);
    int32_t* dst = out.mutable_data();
    for (const auto& p : parts) {
        std::memcpy(dst, p.data(), p.shape(0) * sizeof(int32_t));
        dst += p.shape(0);
    }
    return out;
}

}  // namespace

PYBIND11_MODULE(_radix_core, m) {
    m.doc() = "Native hot loops for radixrt's radix-tree KV cache";
    g_children = PyUnicode_InternFromString("children");
    g_key = PyUnicode_InternFromString("key");
    g_pages = PyUnicode_InternFromString("pages");
    if (g_children == nullptr || g_key == nullptr || g_pages == nullptr) {
        throw py::error_already_set();
    }
    m.def("common_prefix_len", &common_prefix_len, py::arg("a"), py::arg("b"),
          py::arg("page_size") = 1,
          "Length of the common prefix of two int32 arrays, rounded down to a page multiple.");
    m.def("walk", &walk, py::arg("root"), py::arg("tokens"), py::arg("page_size"),
          "Match tokens down a radix tree from root; returns (path, matched_tokens, partial).");
    m.def("gather_pages", &gather_pages, py::arg("path"),
          "Concatenate node.pages over a list of nodes into one new int32 array.");
}
