/* The user-space data plane's runtime: maps and helpers with the kernel's semantics.
 *
 * Compiled once to LLVM bitcode (clang-16 -O2 -emit-llvm) at build time. The JIT links a copy
 * into every program module with internal linkage, so LLVM inlines map operations and helpers
 * into the program and folds what the map's constant header says (type, sizes, addresses).
 * The same bitcode, added once to the engine with its symbols visible, is the management API
 * that Python calls through ctypes (create maps, read and write entries, replay traces).
 *
 * No global mutable state: everything a helper needs is reachable from the map header, the
 * context or the environment, so any number of copies of this code can coexist.
 *
 * Safety comes from the kernel verifier, which accepted every program before it runs here:
 * helpers trust their arguments as the kernel's helpers do after verification.
 */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long s64;
typedef unsigned long size_t;

void *calloc(size_t n, size_t size);
void free(void *p);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
struct timespec { s64 tv_sec; s64 tv_nsec; };
int clock_gettime(int clk, struct timespec *ts);

#define CLOCK_MONOTONIC 1
#define CLOCK_BOOTTIME 7
#define CLOCK_MONOTONIC_COARSE 6
#define NIL 0xffffffffu

#define EPERM 1
#define ENOENT 2
#define E2BIG 7
#define EFAULT 14
#define EEXIST 17
#define EINVAL 22
#define ENOMEM 12
#define ENOSPC 28
#define EBUSY 16
#define EACCES 13

#define BPF_ANY 0
#define BPF_NOEXIST 1
#define BPF_EXIST 2
#define BPF_F_LOCK 4

enum {
	T_HASH = 1, T_ARRAY = 2, T_PROG_ARRAY = 3, T_PERCPU_HASH = 5, T_PERCPU_ARRAY = 6,
	T_LRU_HASH = 9, T_LRU_PERCPU_HASH = 10, T_LPM_TRIE = 11, T_ARRAY_OF_MAPS = 12,
	T_HASH_OF_MAPS = 13, T_DEVMAP = 14, T_CPUMAP = 16, T_XSKMAP = 17, T_DEVMAP_HASH = 25, T_RINGBUF = 27,
};

enum { XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT };

/* Shared by all programs of one user-space data plane. */
struct rt_env {
	u32 cpu;
	u32 ncpus;
	u64 prandom;
	u64 fake_time; /* nonzero: ktime helpers return it (deterministic tests) */
};

/* Mutable part of a map; the header (struct rt_map) never changes after creation. */
struct rt_state {
	u32 count;
	u32 free_head;
	u32 node_count;
	u32 pad;
	u64 clock; /* LRU recency counter */
};

struct lpm_node {
	u32 child[2];
	u32 elem;
};

struct rt_map {
	u32 type, key_size, value_size, max_entries;
	u32 flags, ncpus, stride, elem_size; /* stride: per-CPU value step; elem: key+values */
	u32 key_off_value;                    /* offset of the value(s) inside an element */
	u32 mask;                             /* hash buckets - 1 */
	u32 bits;                             /* LPM: prefix bits */
	u32 max_nodes;
	u8 *values;        /* array values, or element pool */
	u32 *buckets;      /* hash: head element per bucket */
	u32 *next;         /* hash: next element in bucket or free list */
	u64 *stamp;        /* LRU: last use */
	struct lpm_node *nodes;
	struct rt_state *st;
	struct rt_env *env;
	u8 *used;          /* array-like fd maps: slot occupied */
};

/* struct xdp_md as the program sees it (32-bit pointers: frames live below 4 GiB), then
 * what the helpers need. */
struct rt_xdp {
	u32 data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex;
	u64 hard_start;
	u64 hard_end;
	struct rt_env *env;
	u32 tail_calls;
	u32 redirect_kind; /* 0 none, 1 ifindex, 2 map */
	u64 redirect_map;
	u32 redirect_key;
	u32 redirect_ifindex;
	u64 redirect_flags;
};

#define XDP_FRAME_OVERHEAD 40 /* sizeof(struct xdp_frame): adjust_head keeps it free */
#define ETH_HLEN 14
#define MAX_TAIL_CALLS 33

#define INLINE __attribute__((always_inline))
/* Out of line in every program: compiled once, in the engine's copy of the runtime, and
 * called from the programs' modules (the JIT links only declarations of these). They are the
 * slow paths (updates, deletes, evictions, lookups in maps of unknown type): inlining them
 * would cost every program version their compile time and buy no packet any speed. */
#define SHARED __attribute__((noinline))

static inline u32 round8(u32 x) { return (x + 7) & ~7u; }

/* Keys up to this size are hashed and compared by straight-line code: inlined into a program
 * whose map has a constant key size, the size tests fold away and the key's words become
 * plain loads at known stack offsets, which LLVM forwards from the stores that built the
 * key (no store-to-load forwarding stalls, no library call). */
#define UNROLLED_KEY 64

static INLINE u32 hash_bytes(const u8 *key, u32 size)
{
	u64 h = 0x9E3779B97F4A7C15ull ^ size;
	u32 i = 0;
#pragma clang loop unroll(full)
	for (u32 k = 0; k < UNROLLED_KEY / 8; k++) {
		if (i + 8 > size)
			break;
		u64 w;
		memcpy(&w, key + i, 8);
		h = (h ^ w) * 0xff51afd7ed558ccdull;
		h ^= h >> 32;
		i += 8;
	}
	for (; i + 8 <= size; i += 8) {
		u64 w;
		memcpy(&w, key + i, 8);
		h = (h ^ w) * 0xff51afd7ed558ccdull;
		h ^= h >> 32;
	}
	if (i + 4 <= size) { /* at most one 4-byte word remains after the 8-byte ones */
		u32 w;
		memcpy(&w, key + i, 4);
		h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
		h ^= h >> 29;
		i += 4;
	}
#pragma clang loop unroll(full)
	for (u32 k = 0; k < 3; k++) {
		if (i >= size)
			break;
		h = (h ^ key[i]) * 0x100000001b3ull;
		i++;
	}
	h ^= h >> 31;
	return (u32)h;
}

/* memcmp(a, b, size) == 0, in words for the sizes keys have. */
static INLINE int key_equal(const u8 *a, const u8 *b, u32 size)
{
	if (size > UNROLLED_KEY)
		return memcmp(a, b, size) == 0;
	u64 diff = 0;
	u32 i = 0;
#pragma clang loop unroll(full)
	for (u32 k = 0; k < UNROLLED_KEY / 8; k++) {
		if (i + 8 > size)
			break;
		u64 x, y;
		memcpy(&x, a + i, 8);
		memcpy(&y, b + i, 8);
		diff |= x ^ y;
		i += 8;
	}
	if (i + 4 <= size) {
		u32 x, y;
		memcpy(&x, a + i, 4);
		memcpy(&y, b + i, 4);
		diff |= x ^ y;
		i += 4;
	}
	if (i + 2 <= size) {
		u16 x, y;
		memcpy(&x, a + i, 2);
		memcpy(&y, b + i, 2);
		diff |= x ^ y;
		i += 2;
	}
	if (i < size)
		diff |= a[i] ^ b[i];
	return diff == 0;
}

static inline int is_percpu(u32 type)
{
	return type == T_PERCPU_ARRAY || type == T_PERCPU_HASH || type == T_LRU_PERCPU_HASH;
}

static inline int is_lru(u32 type) { return type == T_LRU_HASH || type == T_LRU_PERCPU_HASH; }

static inline int is_array(u32 type)
{
	return type == T_ARRAY || type == T_PERCPU_ARRAY || type == T_PROG_ARRAY ||
	       type == T_ARRAY_OF_MAPS || type == T_DEVMAP || type == T_CPUMAP || type == T_XSKMAP;
}

static inline u8 *elem_ptr(const struct rt_map *m, u32 idx)
{
	return m->values + (u64)idx * m->elem_size;
}

static inline u8 *elem_value(const struct rt_map *m, u32 idx, u32 cpu)
{
	return elem_ptr(m, idx) + m->key_off_value + (u64)cpu * m->stride;
}

/* ---------------------------------------------------------------- creation (user side) */

struct rt_map *rt_map_new(u32 type, u32 key_size, u32 value_size, u32 max_entries, u32 flags,
			  struct rt_env *env)
{
	struct rt_map *m = calloc(1, sizeof(*m));
	if (!m)
		return 0;
	m->type = type;
	m->key_size = key_size;
	m->value_size = value_size;
	m->max_entries = max_entries;
	m->flags = flags;
	m->env = env;
	m->ncpus = is_percpu(type) ? env->ncpus : 1;
	m->stride = round8(value_size);
	m->st = calloc(1, sizeof(struct rt_state));
	if (type == T_RINGBUF) {
		/* Records are produced and never consumed (no reader in user space): the ring
		 * fills exactly as the kernel's does when nobody reads it. */
		m->values = calloc(max_entries ? max_entries : 1, 1);
		return m;
	}
	if (is_array(type)) {
		m->key_off_value = 0;
		m->elem_size = m->stride * m->ncpus;
		m->values = calloc((u64)max_entries ? max_entries : 1, m->elem_size);
		m->used = calloc(max_entries ? max_entries : 1, 1);
		return m;
	}
	m->key_off_value = round8(key_size);
	m->elem_size = m->key_off_value + m->stride * m->ncpus;
	m->values = calloc(max_entries ? max_entries : 1, m->elem_size);
	m->next = calloc(max_entries ? max_entries : 1, sizeof(u32));
	for (u32 i = 0; i < max_entries; i++)
		m->next[i] = i + 1 < max_entries ? i + 1 : NIL;
	m->st->free_head = max_entries ? 0 : NIL;
	if (type == T_LPM_TRIE) {
		m->bits = (key_size - 4) * 8;
		m->max_nodes = max_entries * m->bits + 2;
		m->nodes = calloc(m->max_nodes, sizeof(struct lpm_node));
		m->nodes[0].child[0] = m->nodes[0].child[1] = m->nodes[0].elem = NIL;
		m->st->node_count = 1;
		return m;
	}
	u32 n = 1;
	while (n < max_entries)
		n <<= 1;
	m->mask = n - 1;
	m->buckets = calloc(n, sizeof(u32));
	for (u32 i = 0; i < n; i++)
		m->buckets[i] = NIL;
	if (is_lru(type))
		m->stamp = calloc(max_entries ? max_entries : 1, sizeof(u64));
	return m;
}

void rt_map_free(struct rt_map *m)
{
	free(m->values);
	free(m->buckets);
	free(m->next);
	free(m->stamp);
	free(m->nodes);
	free(m->used);
	free(m->st);
	free(m);
}

u32 rt_header_size(void) { return sizeof(struct rt_map); }
u32 rt_xdp_size(void) { return sizeof(struct rt_xdp); }

/* ---------------------------------------------------------------- hash tables */

static INLINE u32 hash_find(const struct rt_map *m, const void *key, u32 *bucket_out)
{
	u32 b = hash_bytes(key, m->key_size) & m->mask;
	if (bucket_out)
		*bucket_out = b;
	for (u32 i = m->buckets[b]; i != NIL; i = m->next[i])
		if (key_equal(elem_ptr(m, i), key, m->key_size))
			return i;
	return NIL;
}

static void hash_unlink(struct rt_map *m, u32 b, u32 idx)
{
	u32 *link = &m->buckets[b];
	while (*link != idx)
		link = &m->next[*link];
	*link = m->next[idx];
	m->next[idx] = m->st->free_head;
	m->st->free_head = idx;
	m->st->count--;
}

static u32 lru_evict(struct rt_map *m)
{
	/* Exact LRU, not the kernel's approximation: equal verdicts whenever the map does not
	 * overflow; on overflow the kernel's choice of victim is not reproducible anyway. */
	u32 victim = NIL;
	u64 best = ~0ull;
	for (u32 i = 0; i < m->max_entries; i++) {
		if (m->stamp[i] && m->stamp[i] < best) {
			best = m->stamp[i];
			victim = i;
		}
	}
	if (victim == NIL)
		return NIL;
	u32 b = hash_bytes(elem_ptr(m, victim), m->key_size) & m->mask;
	hash_unlink(m, b, victim);
	m->stamp[victim] = 0;
	return victim;
}

static INLINE void *hash_lookup(struct rt_map *m, const void *key)
{
	u32 i = hash_find(m, key, 0);
	if (i == NIL)
		return 0;
	if (m->stamp)
		m->stamp[i] = ++m->st->clock;
	return elem_value(m, i, m->ncpus > 1 ? m->env->cpu : 0);
}

/* `all_cpus`: the value holds every CPU's copy (user-space writes of per-CPU maps). */
SHARED s64 rt_hash_update(struct rt_map *m, const void *key, const void *value, u64 flags,
		       int all_cpus)
{
	if ((flags & 3) == 3 || flags > 7)
		return -EINVAL;
	u32 b;
	u32 i = hash_find(m, key, &b);
	if (i != NIL && (flags & 3) == BPF_NOEXIST)
		return -EEXIST;
	if (i == NIL && (flags & 3) == BPF_EXIST)
		return -ENOENT;
	if (i == NIL) {
		if (m->st->free_head == NIL) {
			if (!m->stamp)
				return -E2BIG;
			if (lru_evict(m) == NIL)
				return -E2BIG;
		}
		i = m->st->free_head;
		m->st->free_head = m->next[i];
		memcpy(elem_ptr(m, i), key, m->key_size);
		m->next[i] = m->buckets[b];
		m->buckets[b] = i;
		m->st->count++;
		if (m->ncpus > 1 && !all_cpus)
			memset(elem_value(m, i, 0), 0, (u64)m->stride * m->ncpus);
	}
	if (m->stamp)
		m->stamp[i] = ++m->st->clock;
	if (all_cpus) {
		for (u32 c = 0; c < m->ncpus; c++)
			memcpy(elem_value(m, i, c), (const u8 *)value + (u64)c * m->stride,
			       m->value_size);
	} else {
		memcpy(elem_value(m, i, m->ncpus > 1 ? m->env->cpu : 0), value, m->value_size);
	}
	return 0;
}

SHARED s64 rt_hash_delete(struct rt_map *m, const void *key)
{
	u32 b;
	u32 i = hash_find(m, key, &b);
	if (i == NIL)
		return -ENOENT;
	hash_unlink(m, b, i);
	if (m->stamp)
		m->stamp[i] = 0;
	return 0;
}

/* ---------------------------------------------------------------- LPM trie */

static inline int key_bit(const u8 *data, u32 n) { return (data[n >> 3] >> (7 - (n & 7))) & 1; }

static INLINE void *lpm_lookup(struct rt_map *m, const void *key)
{
	u32 plen = *(const u32 *)key;
	const u8 *data = (const u8 *)key + 4;
	u32 dlen = m->key_size - 4;
	u32 bits = plen < m->bits ? plen : m->bits;
	u32 node = 0, best = m->nodes[0].elem;
	if (dlen <= 16) {
		/* The prefix bits as two big-endian words: the walk shifts registers instead of
		 * indexing the key, and a key built on the program's stack is read at constant
		 * offsets (LLVM keeps it in registers). */
		u64 hi = 0, lo = 0;
		memcpy(&hi, data, dlen < 8 ? dlen : 8);
		if (dlen > 8)
			memcpy(&lo, data + 8, dlen - 8);
		hi = __builtin_bswap64(hi);
		lo = __builtin_bswap64(lo);
		for (u32 n = 0; n < bits; n++) {
			u32 bit = n < 64 ? (hi >> (63 - n)) & 1 : (lo >> (127 - n)) & 1;
			node = m->nodes[node].child[bit];
			if (node == NIL)
				break;
			if (m->nodes[node].elem != NIL)
				best = m->nodes[node].elem;
		}
		return best == NIL ? 0 : elem_value(m, best, 0);
	}
	for (u32 n = 0; n < bits; n++) {
		node = m->nodes[node].child[key_bit(data, n)];
		if (node == NIL)
			break;
		if (m->nodes[node].elem != NIL)
			best = m->nodes[node].elem;
	}
	return best == NIL ? 0 : elem_value(m, best, 0);
}

static u32 lpm_node_for(struct rt_map *m, const void *key, int create)
{
	u32 plen = *(const u32 *)key;
	const u8 *data = (const u8 *)key + 4;
	u32 node = 0;
	for (u32 n = 0; n < plen; n++) {
		int bit = key_bit(data, n);
		u32 child = m->nodes[node].child[bit];
		if (child == NIL) {
			if (!create || m->st->node_count >= m->max_nodes)
				return NIL;
			child = m->st->node_count++;
			m->nodes[child].child[0] = m->nodes[child].child[1] = NIL;
			m->nodes[child].elem = NIL;
			m->nodes[node].child[bit] = child;
		}
		node = child;
	}
	return node;
}

static void lpm_canonical_key(const struct rt_map *m, const void *key, u8 *out)
{
	/* The kernel keeps only the prefix bits of a stored key; get_next_key returns them so. */
	u32 plen = *(const u32 *)key;
	memset(out, 0, m->key_size);
	memcpy(out, key, 4);
	for (u32 n = 0; n < plen; n++)
		if (key_bit((const u8 *)key + 4, n))
			out[4 + (n >> 3)] |= 1 << (7 - (n & 7));
}

SHARED s64 rt_lpm_update(struct rt_map *m, const void *key, const void *value, u64 flags)
{
	u32 plen = *(const u32 *)key;
	if (plen > m->bits || flags > BPF_EXIST)
		return -EINVAL;
	u32 node = lpm_node_for(m, key, 1);
	if (node == NIL)
		return -ENOSPC;
	u32 i = m->nodes[node].elem;
	if (i != NIL && flags == BPF_NOEXIST)
		return -EEXIST;
	if (i == NIL && flags == BPF_EXIST)
		return -ENOENT;
	if (i == NIL) {
		if (m->st->free_head == NIL)
			return -ENOSPC;
		i = m->st->free_head;
		m->st->free_head = m->next[i];
		lpm_canonical_key(m, key, elem_ptr(m, i));
		m->nodes[node].elem = i;
		m->st->count++;
	}
	memcpy(elem_value(m, i, 0), value, m->value_size);
	return 0;
}

SHARED s64 rt_lpm_delete(struct rt_map *m, const void *key)
{
	if (*(const u32 *)key > m->bits)
		return -EINVAL;
	u32 node = lpm_node_for(m, key, 0);
	if (node == NIL || m->nodes[node].elem == NIL)
		return -ENOENT;
	u32 i = m->nodes[node].elem;
	m->nodes[node].elem = NIL;
	m->next[i] = m->st->free_head;
	m->st->free_head = i;
	m->st->count--;
	return 0;
}

/* ---------------------------------------------------------------- generic map operations */

SHARED void *rt_map_lookup(struct rt_map *m, const void *key)
{
	u32 t = m->type;
	if (is_array(t)) {
		u32 idx = *(const u32 *)key;
		if (idx >= m->max_entries)
			return 0;
		if (t == T_ARRAY_OF_MAPS) /* the program gets the inner map itself */
			return *(void **)(m->values + (u64)idx * m->elem_size);
		if (t == T_PROG_ARRAY || t == T_XSKMAP || t == T_CPUMAP || t == T_DEVMAP)
			if (!m->used[idx])
				return 0;
		return m->values + (u64)idx * m->elem_size +
		       (t == T_PERCPU_ARRAY ? (u64)m->env->cpu * m->stride : 0);
	}
	if (t == T_LPM_TRIE)
		return lpm_lookup(m, key);
	void *v = hash_lookup(m, key);
	if (v && t == T_HASH_OF_MAPS)
		return *(void **)v;
	return v;
}

#define COPIED_KEY 64
#define COPIED_VALUE 256

static INLINE s64 map_update(struct rt_map *m, const void *key, const void *value, u64 flags)
{
	u32 t = m->type;
	if (is_array(t)) {
		u32 idx = *(const u32 *)key;
		if ((flags & 3) == 3 || flags > 7)
			return -EINVAL;
		if (idx >= m->max_entries)
			return -E2BIG;
		if ((flags & 3) == BPF_NOEXIST)
			return -EEXIST;
		memcpy(m->values + (u64)idx * m->elem_size +
			       (t == T_PERCPU_ARRAY ? (u64)m->env->cpu * m->stride : 0),
		       value, m->value_size);
		m->used[idx] = 1;
		return 0;
	}
	if (m->key_size <= COPIED_KEY && m->value_size <= COPIED_VALUE) {
		/* The slow paths get copies: no pointer into the program's stack, where key and
		 * value were built, escapes into a call, so LLVM keeps that stack in registers. */
		u8 k[COPIED_KEY], v[COPIED_VALUE];
		memcpy(k, key, m->key_size);
		memcpy(v, value, m->value_size);
		return t == T_LPM_TRIE ? rt_lpm_update(m, k, v, flags)
				       : rt_hash_update(m, k, v, flags, 0);
	}
	if (t == T_LPM_TRIE)
		return rt_lpm_update(m, key, value, flags);
	return rt_hash_update(m, key, value, flags, 0);
}

SHARED s64 rt_map_delete(struct rt_map *m, const void *key)
{
	u32 t = m->type;
	if (is_array(t)) {
		if (t == T_ARRAY || t == T_PERCPU_ARRAY)
			return -EINVAL;
		u32 idx = *(const u32 *)key;
		if (idx >= m->max_entries)
			return -E2BIG;
		if (!m->used[idx])
			return -ENOENT;
		m->used[idx] = 0;
		memset(m->values + (u64)idx * m->elem_size, 0, m->elem_size);
		return 0;
	}
	if (t == T_LPM_TRIE)
		return rt_lpm_delete(m, key);
	return rt_hash_delete(m, key);
}

/* ---------------------------------------------------------------- user-side API */

/* Copies every CPU's value (stride apart) into `out`; returns 0 or -ENOENT. */
s64 rt_map_read(struct rt_map *m, const void *key, u8 *out)
{
	u32 t = m->type;
	u8 *base;
	if (t == T_RINGBUF)
		return -EINVAL;
	if (is_array(t)) {
		u32 idx = *(const u32 *)key;
		if (idx >= m->max_entries)
			return -ENOENT;
		if (t != T_ARRAY && t != T_PERCPU_ARRAY && !m->used[idx])
			return -ENOENT;
		base = m->values + (u64)idx * m->elem_size;
	} else if (t == T_LPM_TRIE) {
		/* Longest-prefix match, as the kernel's BPF_MAP_LOOKUP_ELEM does on a trie. */
		base = lpm_lookup(m, key);
		if (!base)
			return -ENOENT;
	} else {
		u32 i = hash_find(m, key, 0);
		if (i == NIL)
			return -ENOENT;
		base = elem_value(m, i, 0);
	}
	memcpy(out, base, (u64)m->stride * m->ncpus);
	return 0;
}

/* `value` holds ncpus values, stride apart, for per-CPU maps; one value otherwise. */
s64 rt_map_write(struct rt_map *m, const void *key, const void *value, u64 flags)
{
	u32 t = m->type;
	if (t == T_RINGBUF)
		return -EINVAL;
	if (is_array(t)) {
		u32 idx = *(const u32 *)key;
		if (idx >= m->max_entries)
			return -E2BIG;
		if ((flags & 3) == BPF_NOEXIST)
			return -EEXIST;
		for (u32 c = 0; c < m->ncpus; c++)
			memcpy(m->values + (u64)idx * m->elem_size + (u64)c * m->stride,
			       (const u8 *)value + (u64)c * m->stride, m->value_size);
		m->used[idx] = 1;
		return 0;
	}
	if (t == T_LPM_TRIE)
		return rt_lpm_update(m, key, value, flags);
	return rt_hash_update(m, key, value, flags, 1);
}

s64 rt_map_remove(struct rt_map *m, const void *key)
{
	return m->type == T_RINGBUF ? -EINVAL : rt_map_delete(m, key);
}

/* Element by position, for iteration from Python: copies key and values of the `pos`-th
 * slot if it is in use. Returns 1 (copied), 0 (free slot), -1 (past the end). */
s64 rt_map_slot(struct rt_map *m, u32 pos, u8 *key_out, u8 *value_out)
{
	if (pos >= m->max_entries)
		return -1;
	if (is_array(m->type)) {
		if (m->type != T_ARRAY && m->type != T_PERCPU_ARRAY && !m->used[pos])
			return 0;
		memcpy(key_out, &pos, 4);
		memcpy(value_out, m->values + (u64)pos * m->elem_size, m->elem_size);
		return 1;
	}
	if (m->type == T_LPM_TRIE) {
		for (u32 n = 0; n < m->st->node_count; n++)
			if (m->nodes[n].elem == pos) {
				memcpy(key_out, elem_ptr(m, pos), m->key_size);
				memcpy(value_out, elem_value(m, pos, 0), m->value_size);
				return 1;
			}
		return 0;
	}
	u32 b = hash_bytes(elem_ptr(m, pos), m->key_size) & m->mask;
	for (u32 i = m->buckets[b]; i != NIL; i = m->next[i])
		if (i == pos) {
			memcpy(key_out, elem_ptr(m, pos), m->key_size);
			memcpy(value_out, elem_value(m, pos, 0), (u64)m->stride * m->ncpus);
			return 1;
		}
	return 0;
}

void rt_map_clear(struct rt_map *m)
{
	u32 t = m->type;
	if (t == T_RINGBUF) {
		m->st->clock = 0;
		m->st->count = 0;
		return;
	}
	if (is_array(t)) {
		memset(m->values, 0, (u64)m->max_entries * m->elem_size);
		memset(m->used, 0, m->max_entries);
		return;
	}
	for (u32 i = 0; i < m->max_entries; i++)
		m->next[i] = i + 1 < m->max_entries ? i + 1 : NIL;
	m->st->free_head = m->max_entries ? 0 : NIL;
	m->st->count = 0;
	if (m->buckets)
		for (u32 i = 0; i <= m->mask; i++)
			m->buckets[i] = NIL;
	if (m->stamp)
		memset(m->stamp, 0, (u64)m->max_entries * 8);
	if (m->nodes) {
		m->nodes[0].child[0] = m->nodes[0].child[1] = m->nodes[0].elem = NIL;
		m->st->node_count = 1;
	}
}

/* ---------------------------------------------------------------- helpers
 * Every helper takes the five argument registers as u64 and returns r0, so the JIT calls
 * them uniformly; unused arguments are ignored. `rt_helper_<name>` is the kernel's
 * `bpf_<name>`: the lifter looks helpers up by that name and refuses programs calling
 * any other. */

#define HELPER(name) INLINE u64 rt_helper_##name(u64 r1, u64 r2, u64 r3, u64 r4, u64 r5)

/* Any map (maps of maps hand out inner maps whose type is known only at run time). */
u64 rt_helper_map_lookup_elem(u64 r1, u64 r2, u64 r3, u64 r4, u64 r5)
{
	return (u64)rt_map_lookup((struct rt_map *)r1, (const void *)r2);
}

/* Lookups for a map the lifter knows statically (the map of an ld_imm64 in r1): only that
 * type's code is inlined, and the constant header folds the rest. */
INLINE u64 rt_lookup_array(u64 map, u64 key)
{
	struct rt_map *m = (struct rt_map *)map;
	u32 idx = *(const u32 *)key;
	if (idx >= m->max_entries)
		return 0;
	return (u64)(m->values + (u64)idx * m->elem_size);
}

INLINE u64 rt_lookup_percpu_array(u64 map, u64 key)
{
	struct rt_map *m = (struct rt_map *)map;
	u32 idx = *(const u32 *)key;
	if (idx >= m->max_entries)
		return 0;
	return (u64)(m->values + (u64)idx * m->elem_size + (u64)m->env->cpu * m->stride);
}

INLINE u64 rt_lookup_hash(u64 map, u64 key)
{
	return (u64)hash_lookup((struct rt_map *)map, (const void *)key);
}

INLINE u64 rt_lookup_hash_of_maps(u64 map, u64 key)
{
	void *v = hash_lookup((struct rt_map *)map, (const void *)key);
	return v ? *(u64 *)v : 0;
}

INLINE u64 rt_lookup_array_of_maps(u64 map, u64 key)
{
	struct rt_map *m = (struct rt_map *)map;
	u32 idx = *(const u32 *)key;
	if (idx >= m->max_entries)
		return 0;
	return *(u64 *)(m->values + (u64)idx * m->elem_size);
}

INLINE u64 rt_lookup_lpm(u64 map, u64 key)
{
	return (u64)lpm_lookup((struct rt_map *)map, (const void *)key);
}

HELPER(map_update_elem)
{
	return (u64)map_update((struct rt_map *)r1, (const void *)r2, (const void *)r3, r4);
}

HELPER(map_delete_elem)
{
	struct rt_map *m = (struct rt_map *)r1;
	if (m->key_size <= COPIED_KEY) { /* a copy, as map_update passes one */
		u8 k[COPIED_KEY];
		memcpy(k, (const void *)r2, m->key_size);
		return (u64)rt_map_delete(m, k);
	}
	return (u64)rt_map_delete(m, (const void *)r2);
}

static inline u64 clock_ns(struct rt_env *env, int clk)
{
	if (env->fake_time)
		return env->fake_time;
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (u64)ts.tv_sec * 1000000000ull + (u64)ts.tv_nsec;
}

/* Helpers without a context argument find the environment through a pointer the lifter
 * passes in r5's place (`env` is a constant of the module). */
INLINE u64 rt_helper_ktime_get_ns(u64 r1, u64 r2, u64 r3, u64 r4, u64 env)
{
	return clock_ns((struct rt_env *)env, CLOCK_MONOTONIC);
}

INLINE u64 rt_helper_ktime_get_boot_ns(u64 r1, u64 r2, u64 r3, u64 r4, u64 env)
{
	return clock_ns((struct rt_env *)env, CLOCK_BOOTTIME);
}

INLINE u64 rt_helper_ktime_get_coarse_ns(u64 r1, u64 r2, u64 r3, u64 r4, u64 env)
{
	return clock_ns((struct rt_env *)env, CLOCK_MONOTONIC_COARSE);
}

INLINE u64 rt_helper_get_prandom_u32(u64 r1, u64 r2, u64 r3, u64 r4, u64 env)
{
	struct rt_env *e = (struct rt_env *)env;
	u64 x = e->prandom ? e->prandom : 0x2545F4914F6CDD1Dull;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	e->prandom = x;
	return (u32)(x >> 16);
}

INLINE u64 rt_helper_get_smp_processor_id(u64 r1, u64 r2, u64 r3, u64 r4, u64 env)
{
	return ((struct rt_env *)env)->cpu;
}

INLINE u64 rt_helper_get_numa_node_id(u64 r1, u64 r2, u64 r3, u64 r4, u64 r5)
{
	return 0;
}

static inline u32 csum_words(const u32 *p, u32 words, u32 seed)
{
	/* One's complement sum with end-around carry, as x86's csum_partial computes it. */
	u64 sum = seed;
	for (u32 i = 0; i < words; i++)
		sum += p[i];
	sum = (sum & 0xffffffffull) + (sum >> 32);
	sum = (sum & 0xffffffffull) + (sum >> 32);
	return (u32)sum;
}

HELPER(csum_diff)
{
	/* As the kernel since 6.13 ("bpf_csum_diff: optimize and homogenize for all archs"):
	 * the sum of "to" minus the sum of "from", folded to 16 bits. */
	const u32 *from = (const u32 *)r1, *to = (const u32 *)r3;
	u32 from_size = (u32)r2, to_size = (u32)r4, ret = (u32)r5;
	if (((from_size | to_size) & 3) || from_size > 512 || to_size > 512)
		return (u64)-EINVAL;
	if (from_size && to_size) {
		u32 a = csum_words(to, to_size / 4, ret), b = ~csum_words(from, from_size / 4, 0);
		ret = a + b;
		ret += ret < b;
	} else if (to_size) {
		ret = csum_words(to, to_size / 4, ret);
	} else if (from_size) {
		ret = ~csum_words(from, from_size / 4, ~ret);
	}
	ret += (ret >> 16) | (ret << 16);
	return (u16)(ret >> 16);
}

HELPER(redirect)
{
	/* bpf_redirect(ifindex, flags) from XDP: the context is passed as r3 by the lifter. */
	struct rt_xdp *x = (struct rt_xdp *)r3;
	if (r2)
		return XDP_ABORTED;
	x->redirect_kind = 1;
	x->redirect_ifindex = (u32)r1;
	x->redirect_flags = r2;
	return XDP_REDIRECT;
}

HELPER(redirect_map)
{
	struct rt_map *m = (struct rt_map *)r1;
	struct rt_xdp *x = (struct rt_xdp *)r5; /* the lifter passes the context in r5 */
	u32 key = (u32)r2;
	if (r3 & ~0x1bull) /* BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS | action bits */
		return XDP_ABORTED;
	if (!rt_map_lookup(m, &key))
		return r3 & 3;
	x->redirect_kind = 2;
	x->redirect_map = r1;
	x->redirect_key = key;
	x->redirect_flags = r3;
	return XDP_REDIRECT;
}

HELPER(xdp_adjust_head)
{
	struct rt_xdp *x = (struct rt_xdp *)r1;
	s64 delta = (int)r2;
	u64 data = x->data + delta;
	u64 meta_len = x->data - x->data_meta;
	if (data < x->hard_start + XDP_FRAME_OVERHEAD + meta_len || data > x->data_end - ETH_HLEN)
		return (u64)-EINVAL;
	if (meta_len)
		memmove((void *)(x->data_meta + delta), (void *)(u64)x->data_meta, meta_len);
	x->data_meta = (u32)(x->data_meta + delta);
	x->data = (u32)data;
	return 0;
}

HELPER(xdp_adjust_tail)
{
	struct rt_xdp *x = (struct rt_xdp *)r1;
	s64 delta = (int)r2;
	u64 end = x->data_end + delta;
	if (end > x->hard_end || end < (u64)x->data + ETH_HLEN)
		return (u64)-EINVAL;
	if (delta > 0) /* the kernel clears the grown area */
		memset((void *)(u64)x->data_end, 0, delta);
	x->data_end = (u32)end;
	return 0;
}

HELPER(xdp_adjust_meta)
{
	struct rt_xdp *x = (struct rt_xdp *)r1;
	s64 delta = (int)r2;
	u64 meta = x->data_meta + delta;
	u64 len = x->data - meta;
	if (meta < x->hard_start + XDP_FRAME_OVERHEAD || meta > x->data)
		return (u64)-EINVAL;
	if ((len & 3) || len > 32)
		return (u64)-EACCES;
	x->data_meta = (u32)meta;
	return 0;
}

HELPER(xdp_get_buff_len)
{
	struct rt_xdp *x = (struct rt_xdp *)r1;
	return x->data_end - x->data;
}

HELPER(xdp_load_bytes)
{
	struct rt_xdp *x = (struct rt_xdp *)r1;
	u32 off = (u32)r2, len = (u32)r4;
	if ((u64)off + len > x->data_end - x->data)
		return (u64)-EFAULT;
	memcpy((void *)r3, (void *)(u64)(x->data + off), len);
	return 0;
}

HELPER(xdp_store_bytes)
{
	struct rt_xdp *x = (struct rt_xdp *)r1;
	u32 off = (u32)r2, len = (u32)r4;
	if ((u64)off + len > x->data_end - x->data)
		return (u64)-EFAULT;
	memcpy((void *)(u64)(x->data + off), (void *)r3, len);
	return 0;
}

/* Lifted functions take the five argument registers and the program context. */
typedef u64 (*bpf_fn)(u64, u64, u64, u64, u64, u64);

HELPER(loop)
{
	u64 nr = (u32)r1;
	if (r4)
		return (u64)-EINVAL;
	if (nr > (1u << 23))
		return (u64)-E2BIG;
	bpf_fn fn = (bpf_fn)r2;
	u64 i;
	for (i = 0; i < nr; i++)
		if (fn(i, r3, 0, 0, 0, r5)) /* r5: the context, passed by the lifter */
			return i + 1;
	return i;
}

#define RINGBUF_HDR 8
#define EAGAIN 11

SHARED u8 *rt_ringbuf_alloc(struct rt_map *m, u64 size)
{
	u64 len = (size + RINGBUF_HDR + 7) & ~7ull;
	if (size > m->max_entries - RINGBUF_HDR || m->st->clock + len > m->max_entries - 1)
		return 0;
	u8 *rec = m->values + m->st->clock;
	*(u32 *)rec = (u32)size;
	m->st->clock += len;
	m->st->count++;
	return rec + RINGBUF_HDR;
}

HELPER(ringbuf_reserve)
{
	if (r3)
		return 0;
	return (u64)rt_ringbuf_alloc((struct rt_map *)r1, r2);
}

HELPER(ringbuf_submit) { return 0; }
HELPER(ringbuf_discard) { return 0; }

HELPER(ringbuf_output)
{
	u8 *rec = rt_ringbuf_alloc((struct rt_map *)r1, r3);
	if (!rec)
		return (u64)-EAGAIN;
	memcpy(rec, (const void *)r2, r3);
	return 0;
}

typedef u64 (*bpf_entry)(u64 ctx);

/* Tail call: the entry of the program in the slot (0: none, or too many tail calls). */
u64 rt_tail_call_target(u64 ctx, u64 map, u64 index)
{
	struct rt_xdp *x = (struct rt_xdp *)ctx;
	struct rt_map *m = (struct rt_map *)map;
	u32 idx = (u32)index;
	if (idx >= m->max_entries || !m->used[idx])
		return 0;
	if (x->tail_calls >= MAX_TAIL_CALLS)
		return 0;
	x->tail_calls++;
	return *(u64 *)(m->values + (u64)idx * m->elem_size);
}

/* ---------------------------------------------------------------- running frames */

#define FRAME_SLOT 4096
#define HEADROOM 256
#define TAILROOM 320 /* skb_shared_info, as BPF_PROG_TEST_RUN reserves it */

/* Prepares the context for a frame copied to `slot + HEADROOM` (slot below 4 GiB). */
static inline void frame_ctx(struct rt_xdp *x, u8 *slot, u32 len, u32 ingress,
			     struct rt_env *env)
{
	x->hard_start = (u64)slot;
	x->hard_end = (u64)slot + FRAME_SLOT - TAILROOM;
	x->data = (u32)(u64)(slot + HEADROOM);
	x->data_meta = x->data;
	x->data_end = x->data + len;
	x->ingress_ifindex = ingress;
	x->rx_queue_index = 0;
	x->egress_ifindex = 0;
	x->env = env;
	x->tail_calls = 0;
	x->redirect_kind = 0;
}

/* Runs one frame: copies it into `slot`, runs the program; the packet is left in the slot
 * (ctx->data .. ctx->data_end). Returns the program's r0. */
u64 rt_run_frame(bpf_entry entry, struct rt_xdp *x, u8 *slot, const u8 *frame, u32 len,
		 u32 ingress, struct rt_env *env)
{
	frame_ctx(x, slot, len, ingress, env);
	memcpy(slot + HEADROOM, frame, len);
	return entry((u64)x);
}

struct rt_trace {
	const u8 *bytes;   /* frames back to back */
	const u32 *offset; /* start of each frame in bytes */
	const u32 *len;
	u32 count;
	u32 ingress;
};

/* Replays a trace `passes` times through `entry`, fresh bytes for every packet; verdicts
 * (of the last pass) go to `verdicts` if not null. Returns the elapsed nanoseconds. */
u64 rt_replay(bpf_entry entry, const struct rt_trace *t, u8 *slot, struct rt_xdp *x,
	      struct rt_env *env, u32 passes, u32 *verdicts)
{
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (u32 p = 0; p < passes; p++) {
		for (u32 i = 0; i < t->count; i++) {
			frame_ctx(x, slot, t->len[i], t->ingress, env);
			memcpy(slot + HEADROOM, t->bytes + t->offset[i], t->len[i]);
			u32 v = (u32)entry((u64)x);
			if (verdicts)
				verdicts[i] = v;
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	return (u64)(b.tv_sec - a.tv_sec) * 1000000000ull + (u64)(b.tv_nsec - a.tv_nsec);
}

/* The replay loop without a program (measures the loop's own cost, like the kernel
 * harness's overhead run). */
static u64 rt_nop_entry(u64 ctx) { return ((struct rt_xdp *)ctx)->data_end & 3; }

u64 rt_replay_overhead(const struct rt_trace *t, u8 *slot, struct rt_xdp *x,
		       struct rt_env *env, u32 passes)
{
	bpf_entry volatile e = rt_nop_entry;
	return rt_replay(e, t, slot, x, env, passes, 0);
}

/* ---------------------------------------------------------------- AF_XDP */

struct xdp_desc_ {
	u64 addr;
	u32 len;
	u32 options;
};

/* The four rings of one AF_XDP socket (pointers into the kernel's mmapped rings) and its
 * UMEM (below 4 GiB). Counters: frames per verdict. */
struct rt_xsk {
	u32 *rx_prod, *rx_cons;
	struct xdp_desc_ *rx;
	u32 *fr_prod, *fr_cons;
	u64 *fr;
	u32 *tx_prod, *tx_cons;
	struct xdp_desc_ *tx;
	u32 *cr_prod, *cr_cons;
	u64 *cr;
	u8 *umem;
	u32 rx_mask, fr_mask, tx_mask, cr_mask;
	u32 frame_size, headroom;
	u64 verdicts[5];
	u64 other;
	u32 tx_pending;
	u32 pad;
};

static inline u32 load_acquire(u32 *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void store_release(u32 *p, u32 v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* Receives up to `budget` frames, runs each through `entry`, sends XDP_TX frames back out
 * of the socket and recycles the others into the fill ring. Returns the frames received. */
u32 rt_xsk_batch(struct rt_xsk *s, bpf_entry entry, struct rt_xdp *x, struct rt_env *env,
		 u32 ingress, u32 budget)
{
	/* Frames the kernel finished sending go back to the fill ring. */
	u32 cr_cons = *s->cr_cons, cr_prod = load_acquire(s->cr_prod);
	u32 fr_prod = *s->fr_prod;
	for (; cr_cons != cr_prod; cr_cons++)
		s->fr[fr_prod++ & s->fr_mask] = s->cr[cr_cons & s->cr_mask];
	store_release(s->cr_cons, cr_cons);

	u32 rx_cons = *s->rx_cons, rx_prod = load_acquire(s->rx_prod);
	u32 tx_prod = *s->tx_prod;
	u32 n = 0;
	for (; rx_cons != rx_prod && n < budget; rx_cons++, n++) {
		struct xdp_desc_ *d = &s->rx[rx_cons & s->rx_mask];
		u64 chunk = d->addr - d->addr % s->frame_size;
		u8 *base = s->umem + chunk;
		x->hard_start = (u64)base;
		x->hard_end = (u64)base + s->frame_size;
		x->data = (u32)(u64)(s->umem + d->addr);
		x->data_meta = x->data;
		x->data_end = x->data + d->len;
		x->ingress_ifindex = ingress;
		x->rx_queue_index = 0;
		x->egress_ifindex = 0;
		x->env = env;
		x->tail_calls = 0;
		x->redirect_kind = 0;
		u32 v = (u32)entry((u64)x);
		if (v < 5)
			s->verdicts[v]++;
		else
			s->other++;
		if (v == XDP_TX && tx_prod - load_acquire(s->tx_cons) <= s->tx_mask) {
			struct xdp_desc_ *t = &s->tx[tx_prod++ & s->tx_mask];
			t->addr = x->data - (u64)s->umem;
			t->len = x->data_end - x->data;
			t->options = 0;
			s->tx_pending++;
		} else {
			s->fr[fr_prod++ & s->fr_mask] = chunk;
		}
	}
	store_release(s->rx_cons, rx_cons);
	store_release(s->fr_prod, fr_prod);
	store_release(s->tx_prod, tx_prod);
	return n;
}
