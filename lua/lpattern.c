/* Lua 5.4 pattern matching with a step budget: string.find, string.match,
 * string.gmatch and string.gsub for the policy sandbox.
 *
 * The standard library's matcher is one VM instruction however long it
 * runs, and a backtracking pattern can run for minutes ("a?" repeated
 * thirty times before thirty "a", or ".-b" over a long subject): the count
 * hook never gets to look at the clock. This implementation follows the
 * semantics of the Lua 5.4 reference manual (section 6.4.1, and 6.4 for the
 * functions) and counts its work: every attempt to match one character of
 * the subject and every backtrack is a step. The steps are charged to the
 * running code through a meter (the sandbox charges them to the call's
 * instruction budget and looks at its clock); without a meter one call may
 * take at most MDM__LPATTERN_STEPS_MAX steps.
 *
 * A pattern is first translated into a list of items (one per character
 * class, capture bracket, anchor, %b, %f or back-reference), each
 * character class with a 256-bit membership map. A malformed part does not
 * fail the translation: it becomes an item that raises the error when the
 * matcher reaches it, which is when Lua reports such errors (a pattern
 * "x[" searched in a subject without an "x" is not an error). */
#include <ctype.h>
#include <stdint.h>
#include <string.h>

#include "sandbox_internal.h"

#define MAX_CAPTURES 32     /* as the standard library's LUA_MAXCAPTURES */
#define MAX_DEPTH 200       /* nested matcher calls, as the standard library's */
#define CAP_OPEN (-1)       /* capture length: not closed yet */
#define CAP_POSITION (-2)   /* capture length: a position capture "()" */

#define SPECIALS "^$*+?.([%-"

enum {
    OP_DONE,        /* end of the pattern: matched */
    OP_CHAR,        /* one character (c1), with a repetition */
    OP_ANY,         /* '.', with a repetition */
    OP_SET,         /* a class or [set] (map), with a repetition */
    OP_OPEN,        /* '(' */
    OP_OPEN_POS,    /* '()' */
    OP_CLOSE,       /* ')' */
    OP_BALANCE,     /* %b c1 c2 */
    OP_FRONTIER,    /* %f[set] (map) */
    OP_BACKREF,     /* %0 .. %9 (c1 is the digit) */
    OP_AT_END,      /* '$' as the last character */
    OP_ERROR,       /* a malformed pattern: raises msg */
};

typedef struct item {
    uint8_t op;
    uint8_t rep;            /* 0, '*', '+', '-' or '?' */
    unsigned char c1, c2;
    const uint8_t *map;     /* 32 bytes: bit c set when c is in the class */
    const char *msg;
} item_t;

/* A translated pattern (the contents of a userdata). */
typedef struct compiled {
    bool anchored;          /* '^' first (find, match, gsub) */
    item_t *items;          /* the items, then one OP_DONE */
    uint8_t (*maps)[32];    /* the maps of [sets] */
} compiled_t;

typedef struct capture {
    const char *start;
    ptrdiff_t len;          /* or CAP_OPEN, CAP_POSITION */
} capture_t;

/* One matching operation. */
typedef struct mstate {
    lua_State *L;
    const char *subject, *end;
    int ncap;
    int depth;
    capture_t cap[MAX_CAPTURES];
    const mdm__lpattern_meter_t *meter;
    uint64_t steps;         /* steps since the last charge */
    uint64_t allow;         /* steps allowed until the next charge */
    uint64_t total;         /* without a meter: all steps of this call */
} mstate_t;

/* ---- character classes ----------------------------------------------------------- */

/* %z (the '\0' byte) is kept for old patterns, as the standard library
 * keeps it. */
static const char class_letters[] = "acdglpsuwxz";
static uint8_t class_maps[2 * (sizeof(class_letters) - 1)][32];
static bool class_maps_ready;

static bool in_class(int letter, int c)
{
    switch (letter) {
    case 'a': return isalpha(c);
    case 'c': return iscntrl(c);
    case 'd': return isdigit(c);
    case 'g': return isgraph(c);
    case 'l': return islower(c);
    case 'p': return ispunct(c);
    case 's': return isspace(c);
    case 'u': return isupper(c);
    case 'w': return isalnum(c);
    case 'x': return isxdigit(c);
    default: return c == 0;
    }
}

static void map_set(uint8_t *map, unsigned c)
{
    map[c >> 3] |= (uint8_t)(1u << (c & 7));
}

static bool map_has(const uint8_t *map, unsigned char c)
{
    return (map[c >> 3] >> (c & 7)) & 1;
}

static void class_maps_init(void)
{
    if (class_maps_ready)
        return;
    size_t n = sizeof(class_letters) - 1;
    for (size_t i = 0; i < n; i++) {
        memset(class_maps[i], 0, 32);
        memset(class_maps[n + i], 0, 32);
        for (unsigned c = 0; c < 256; c++)
            map_set(in_class(class_letters[i], (int)c) ? class_maps[i] : class_maps[n + i], c);
    }
    class_maps_ready = true;
}

/* The map of %letter: a class (upper case: its complement), or NULL for a
 * letter that only stands for itself. */
static const uint8_t *class_map(unsigned char letter)
{
    const char *at = memchr(class_letters, tolower(letter), sizeof(class_letters) - 1);
    if (at == NULL)
        return NULL;
    size_t i = (size_t)(at - class_letters);
    return isupper(letter) ? class_maps[sizeof(class_letters) - 1 + i] : class_maps[i];
}

/* ---- translating a pattern ------------------------------------------------------------ */

/* Where the set starting at p[i] == '[' ends (the index of its ']'), or 0
 * when it does not. The first character (after a '^') belongs to the set
 * even if it is a ']', and '%' takes the next character with it. */
static size_t set_end(const char *p, size_t len, size_t i)
{
    size_t k = i + 1;
    if (k < len && p[k] == '^')
        k++;
    do {
        if (k >= len)
            return 0;
        if (p[k++] == '%' && k < len)
            k++;
    } while (k >= len || p[k] != ']');
    return k;
}

/* Fills map with the members of the set between p[from] and p[to]
 * (exclusive), '^' already taken off. */
static void set_fill(uint8_t *map, const char *p, size_t from, size_t to, bool negated)
{
    memset(map, 0, 32);
    for (size_t q = from; q < to; q++) {
        unsigned char c = (unsigned char)p[q];
        if (c == '%') {
            unsigned char e = (unsigned char)p[++q];
            const uint8_t *cm = class_map(e);
            if (cm == NULL)
                map_set(map, e);
            else
                for (int b = 0; b < 32; b++)
                    map[b] |= cm[b];
        } else if (q + 2 < to && p[q + 1] == '-') {
            unsigned char hi = (unsigned char)p[q + 2];
            for (unsigned x = c; x <= hi; x++)
                map_set(map, x);
            q += 2;
        } else {
            map_set(map, c);
        }
    }
    if (negated)
        for (int b = 0; b < 32; b++)
            map[b] = (uint8_t)~map[b];
}

/* Where a pattern is read: its text, and the maps of its [sets] (NULL
 * while only counting them). */
typedef struct reader {
    const char *p;
    size_t len;
    uint8_t (*maps)[32];
    size_t nmaps;
} reader_t;

static size_t error_item(item_t *x, const char *msg, size_t at)
{
    *x = (item_t){.op = OP_ERROR, .msg = msg};
    return at;
}

/* The [set] at p[open] as an item of kind op; returns where it ends. */
static size_t read_set(reader_t *r, size_t open, int op, item_t *x)
{
    size_t close = set_end(r->p, r->len, open);
    if (close == 0)
        return error_item(x, "malformed pattern (missing ']')", open);
    *x = (item_t){.op = (uint8_t)op};
    if (r->maps != NULL) {
        bool neg = r->p[open + 1] == '^';
        set_fill(r->maps[r->nmaps], r->p, open + 1 + neg, close, neg);
        x->map = r->maps[r->nmaps];
    }
    r->nmaps++;
    return close + 1;
}

/* The item that starts with '%' at p[at]: %b, %f, a back-reference, a
 * class or an escaped character; returns where it ends. */
static size_t read_percent(reader_t *r, size_t at, item_t *x)
{
    const char *p = r->p;
    if (at + 1 >= r->len)
        return error_item(x, "malformed pattern (ends with '%')", at);
    unsigned char c = (unsigned char)p[at + 1];
    if (c == 'b') {
        if (at + 3 >= r->len)
            return error_item(x, "malformed pattern (missing arguments to '%b')", at);
        *x = (item_t){.op = OP_BALANCE, .c1 = (unsigned char)p[at + 2],
                      .c2 = (unsigned char)p[at + 3]};
        return at + 4;
    }
    if (c == 'f') {
        if (at + 2 >= r->len || p[at + 2] != '[')
            return error_item(x, "missing '[' after '%f' in pattern", at);
        return read_set(r, at + 2, OP_FRONTIER, x);
    }
    if (isdigit(c)) {
        *x = (item_t){.op = OP_BACKREF, .c1 = c};
        return at + 2;
    }
    const uint8_t *map = class_map(c);
    *x = (item_t){.op = map ? OP_SET : OP_CHAR, .c1 = c, .map = map};
    return at + 2;
}

/* Reads one item at p[*i] into *x and moves *i past it. Returns false for
 * an error item: nothing after it can be reached. */
static bool read_item(reader_t *r, size_t *i, item_t *x)
{
    const char *p = r->p;
    size_t at = *i, next = at + 1;
    *x = (item_t){.op = OP_CHAR, .c1 = (unsigned char)p[at]};
    switch (p[at]) {
    case '(':
        x->op = next < r->len && p[next] == ')' ? OP_OPEN_POS : OP_OPEN;
        next += x->op == OP_OPEN_POS;
        break;
    case ')': x->op = OP_CLOSE; break;
    case '.': x->op = OP_ANY; break;
    case '$':
        if (next == r->len)
            x->op = OP_AT_END;
        break;
    case '[': next = read_set(r, at, OP_SET, x); break;
    case '%': next = read_percent(r, at, x); break;
    default: break;
    }
    bool single = x->op == OP_CHAR || x->op == OP_ANY || x->op == OP_SET;
    if (single && next < r->len && p[next] != '\0' && strchr("*+-?", p[next]) != NULL)
        x->rep = (uint8_t)p[next++];
    *i = next;
    return x->op != OP_ERROR;
}

/* Walks the pattern: counts the items and maps (items NULL), or fills them. */
static size_t read_items(reader_t *r, item_t *items)
{
    size_t n = 0, i = 0;
    r->nmaps = 0;
    while (i < r->len) {
        item_t x;
        bool more = read_item(r, &i, &x);
        if (items != NULL)
            items[n] = x;
        n++;
        if (!more)
            break;
    }
    if (items != NULL)
        items[n] = (item_t){.op = OP_DONE};
    return n;
}

/* Pushes a userdata holding the translated pattern (a leading '^' is an
 * anchor when anchors is true) and returns it. */
static compiled_t *compile(lua_State *L, const char *p, size_t len, bool anchors)
{
    class_maps_init();
    bool anchored = anchors && len > 0 && p[0] == '^';
    p += anchored;
    len -= anchored;
    reader_t r = {.p = p, .len = len};
    size_t n = read_items(&r, NULL);
    size_t size = sizeof(compiled_t) + (n + 1) * sizeof(item_t) + r.nmaps * 32;
    compiled_t *c = lua_newuserdatauv(L, size, 0);
    c->anchored = anchored;
    c->items = (item_t *)(c + 1);
    c->maps = (uint8_t(*)[32])(c->items + n + 1);
    r.maps = c->maps;
    read_items(&r, c->items);
    return c;
}

/* ---- counting steps ---------------------------------------------------------------------- */

static void charge(mstate_t *ms)
{
    uint64_t used = ms->steps;
    ms->steps = 0;
    if (ms->meter != NULL) {
        ms->allow = ms->meter->charge(ms->L, used);
        return;
    }
    ms->total += used;
    if (ms->total >= MDM__LPATTERN_STEPS_MAX)
        luaL_error(ms->L, "%s", MDM__LPATTERN_BUDGET_TEXT);
    ms->allow = MDM__LPATTERN_STEPS_MAX - ms->total;
}

static inline void step(mstate_t *ms)
{
    if (++ms->steps >= ms->allow)
        charge(ms);
}

static void steps(mstate_t *ms, size_t n)
{
    ms->steps += n;
    if (ms->steps >= ms->allow)
        charge(ms);
}

/* Comparing, searching or copying n bytes at once (memcmp, memmem, a
 * replacement string) is much cheaper than n single matches. */
static void bytes_steps(mstate_t *ms, size_t n)
{
    steps(ms, 1 + n / 16);
}

static void mstate_init(mstate_t *ms, lua_State *L, const char *s, size_t len)
{
    ms->L = L;
    ms->subject = s;
    ms->end = s + len;
    ms->ncap = 0;
    ms->depth = 0;
    ms->meter = lua_touserdata(L, lua_upvalueindex(1));
    ms->steps = 0;
    ms->total = 0;
    charge(ms);
}

/* ---- matching ------------------------------------------------------------------------- */

static bool single(mstate_t *ms, const char *s, const item_t *it)
{
    step(ms);
    if (s >= ms->end)
        return false;
    unsigned char c = (unsigned char)*s;
    switch (it->op) {
    case OP_ANY: return true;
    case OP_CHAR: return c == it->c1;
    default: return map_has(it->map, c);
    }
}

static const char *match(mstate_t *ms, const char *s, const item_t *it);

/* it* (or it+ after one): as many as possible, then back off one by one. */
static const char *greedy(mstate_t *ms, const char *s, const item_t *it)
{
    size_t n = 0;
    while (single(ms, s + n, it))
        n++;
    for (;;) {
        const char *r = match(ms, s + n, it + 1);
        if (r != NULL || n == 0)
            return r;
        n--;
        step(ms);
    }
}

/* it-: as few as possible, one more after each failure of the rest. */
static const char *lazy(mstate_t *ms, const char *s, const item_t *it)
{
    for (;;) {
        const char *r = match(ms, s, it + 1);
        if (r != NULL)
            return r;
        step(ms);
        if (!single(ms, s, it))
            return NULL;
        s++;
    }
}

static const char *open_capture(mstate_t *ms, const char *s, const item_t *it)
{
    if (ms->ncap >= MAX_CAPTURES)
        luaL_error(ms->L, "too many captures");
    ms->cap[ms->ncap] = (capture_t){.start = s,
                                    .len = it->op == OP_OPEN_POS ? CAP_POSITION : CAP_OPEN};
    ms->ncap++;
    const char *r = match(ms, s, it + 1);
    if (r == NULL) {
        ms->ncap--;
        step(ms);
    }
    return r;
}

static const char *close_capture(mstate_t *ms, const char *s, const item_t *it)
{
    int i = ms->ncap - 1;
    while (i >= 0 && ms->cap[i].len != CAP_OPEN)
        i--;
    if (i < 0)
        luaL_error(ms->L, "invalid pattern capture");
    ms->cap[i].len = s - ms->cap[i].start;
    const char *r = match(ms, s, it + 1);
    if (r == NULL) {
        ms->cap[i].len = CAP_OPEN;
        step(ms);
    }
    return r;
}

/* %bxy: from an x to the y that balances it. */
static const char *balance(mstate_t *ms, const char *s, const item_t *it)
{
    if (!single(ms, s, &(item_t){.op = OP_CHAR, .c1 = it->c1}))
        return NULL;
    int open = 1;
    for (const char *q = s + 1; q < ms->end; q++) {
        step(ms);
        if ((unsigned char)*q == it->c2) {
            if (--open == 0)
                return q + 1;
        } else if ((unsigned char)*q == it->c1) {
            open++;
        }
    }
    return NULL;
}

/* %f[set]: the character before s is not in the set and the one at s is
 * (the subject's ends count as '\0'). */
static bool frontier(mstate_t *ms, const char *s, const item_t *it)
{
    step(ms);
    unsigned char before = s == ms->subject ? '\0' : (unsigned char)s[-1];
    unsigned char at = s < ms->end ? (unsigned char)*s : '\0';
    return !map_has(it->map, before) && map_has(it->map, at);
}

/* %1 .. %9: the text of a closed capture again. */
static const char *backref(mstate_t *ms, const char *s, const item_t *it)
{
    int i = it->c1 - '1';
    if (i < 0 || i >= ms->ncap || ms->cap[i].len == CAP_OPEN)
        luaL_error(ms->L, "invalid capture index %%%d", i + 1);
    if (ms->cap[i].len == CAP_POSITION)
        return NULL;
    size_t n = (size_t)ms->cap[i].len;
    bytes_steps(ms, n);
    if ((size_t)(ms->end - s) < n || memcmp(ms->cap[i].start, s, n) != 0)
        return NULL;
    return s + n;
}

/* Matches the items from it on against the subject at s; returns the end
 * of the match or NULL. */
static const char *match(mstate_t *ms, const char *s, const item_t *it)
{
    if (++ms->depth > MAX_DEPTH)
        luaL_error(ms->L, "pattern too complex");
    const char *r = NULL;
    for (;;) {
        switch (it->op) {
        case OP_DONE: r = s; goto out;
        case OP_AT_END: r = s == ms->end ? s : NULL; goto out;
        case OP_ERROR: luaL_error(ms->L, "%s", it->msg); goto out;
        case OP_OPEN:
        case OP_OPEN_POS: r = open_capture(ms, s, it); goto out;
        case OP_CLOSE: r = close_capture(ms, s, it); goto out;
        case OP_BALANCE:
            s = balance(ms, s, it);
            break;
        case OP_FRONTIER:
            s = frontier(ms, s, it) ? s : NULL;
            break;
        case OP_BACKREF:
            s = backref(ms, s, it);
            break;
        default:
            switch (it->rep) {
            case '*': r = greedy(ms, s, it); goto out;
            case '-': r = lazy(ms, s, it); goto out;
            case '+':
                r = single(ms, s, it) ? greedy(ms, s + 1, it) : NULL;
                goto out;
            case '?':
                if (single(ms, s, it) && (r = match(ms, s + 1, it + 1)) != NULL)
                    goto out;
                step(ms);
                break;
            default:
                s = single(ms, s, it) ? s + 1 : NULL;
                break;
            }
        }
        if (s == NULL)
            goto out;
        it++;
    }
out:
    ms->depth--;
    return r;
}

/* Tries the pattern at s with no captures yet. */
static const char *match_at(mstate_t *ms, const char *s, const compiled_t *c)
{
    ms->ncap = 0;
    ms->depth = 0;
    step(ms);
    return match(ms, s, c->items);
}

/* ---- captures ------------------------------------------------------------------------- */

/* Pushes capture i; with no captures at all, i 0 is the whole match s..e. */
static void push_capture(mstate_t *ms, int i, const char *s, const char *e)
{
    if (i >= ms->ncap) {
        if (i != 0)
            luaL_error(ms->L, "invalid capture index %%%d", i + 1);
        lua_pushlstring(ms->L, s, (size_t)(e - s));
        return;
    }
    const capture_t *c = &ms->cap[i];
    if (c->len == CAP_OPEN)
        luaL_error(ms->L, "unfinished capture");
    if (c->len == CAP_POSITION)
        lua_pushinteger(ms->L, (lua_Integer)(c->start - ms->subject) + 1);
    else
        lua_pushlstring(ms->L, c->start, (size_t)c->len);
}

/* Pushes every capture (the whole match s..e when there are none and
 * whole is true); returns how many. */
static int push_captures(mstate_t *ms, const char *s, const char *e, bool whole)
{
    int n = ms->ncap == 0 && whole ? 1 : ms->ncap;
    luaL_checkstack(ms->L, n, "too many captures");
    for (int i = 0; i < n; i++)
        push_capture(ms, i, s, e);
    return n;
}

/* ---- the library functions ------------------------------------------------------------ */

/* A position argument as a 0-based offset: negative counts from the end,
 * 0 and anything before the start is the start. */
static size_t start_offset(lua_Integer pos, size_t len)
{
    if (pos > 0)
        return (size_t)pos - 1;
    if (pos == 0 || (pos < 0 && (lua_Unsigned)-(pos + 1) >= len))
        return 0;
    return len - (size_t)-pos;
}

static bool has_specials(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] != '\0' && strchr(SPECIALS, p[i]) != NULL)
            return true;
    return false;
}

static bool plain_search(lua_State *L, mstate_t *ms, const char *s, size_t len, size_t init,
                         const char *p, size_t plen)
{
    bytes_steps(ms, len - init);
    const char *at = memmem(s + init, len - init, p, plen);
    if (at == NULL)
        return false;
    lua_pushinteger(L, (lua_Integer)(at - s) + 1);
    lua_pushinteger(L, (lua_Integer)(at - s) + (lua_Integer)plen);
    return true;
}

static int find_or_match(lua_State *L, bool find)
{
    size_t len = 0, plen = 0;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *p = luaL_checklstring(L, 2, &plen);
    size_t init = start_offset(luaL_optinteger(L, 3, 1), len);
    if (init > len) {
        luaL_pushfail(L);
        return 1;
    }
    mstate_t ms;
    mstate_init(&ms, L, s, len);
    if (find && (lua_toboolean(L, 4) || !has_specials(p, plen))) {
        bool found = plain_search(L, &ms, s, len, init, p, plen);
        charge(&ms);
        if (!found)
            luaL_pushfail(L);
        return found ? 2 : 1;
    }
    steps(&ms, plen);
    compiled_t *c = compile(L, p, plen, true);
    for (const char *at = s + init;; at++) {
        const char *e = match_at(&ms, at, c);
        if (e != NULL) {
            charge(&ms);
            if (!find)
                return push_captures(&ms, at, e, true);
            lua_pushinteger(L, (lua_Integer)(at - s) + 1);
            lua_pushinteger(L, (lua_Integer)(e - s));
            return push_captures(&ms, NULL, NULL, false) + 2;
        }
        if (at >= ms.end || c->anchored)
            break;
    }
    charge(&ms);
    luaL_pushfail(L);
    return 1;
}

static int lp_find(lua_State *L)
{
    return find_or_match(L, true);
}

static int lp_match(lua_State *L)
{
    return find_or_match(L, false);
}

/* gmatch's iterator. Upvalues: the meter, the subject, the translated
 * pattern, the position (a userdata). */
typedef struct gm_pos {
    size_t next;            /* where to try next */
    size_t last;            /* end of the last match, or SIZE_MAX */
} gm_pos_t;

static int gmatch_next(lua_State *L)
{
    size_t len = 0;
    const char *s = lua_tolstring(L, lua_upvalueindex(2), &len);
    const compiled_t *c = lua_touserdata(L, lua_upvalueindex(3));
    gm_pos_t *pos = lua_touserdata(L, lua_upvalueindex(4));
    mstate_t ms;
    mstate_init(&ms, L, s, len);
    for (size_t at = pos->next; at <= len; at++) {
        const char *e = match_at(&ms, s + at, c);
        if (e != NULL && (size_t)(e - s) != pos->last) {
            pos->next = pos->last = (size_t)(e - s);
            charge(&ms);
            return push_captures(&ms, s + at, e, true);
        }
    }
    pos->next = len + 1;
    charge(&ms);
    return 0;
}

static int lp_gmatch(lua_State *L)
{
    size_t len = 0, plen = 0;
    luaL_checklstring(L, 1, &len);
    const char *p = luaL_checklstring(L, 2, &plen);
    size_t init = start_offset(luaL_optinteger(L, 3, 1), len);
    if (init > len)
        init = len + 1;
    mstate_t ms;
    mstate_init(&ms, L, "", 0);
    steps(&ms, plen);
    charge(&ms);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    compile(L, p, plen, false);
    gm_pos_t *pos = lua_newuserdatauv(L, sizeof(*pos), 0);
    *pos = (gm_pos_t){.next = init, .last = SIZE_MAX};
    lua_pushcclosure(L, gmatch_next, 4);
    return 1;
}

/* Appends the replacement string r (with %0-%9 and %%) for the match s..e. */
static void add_template(mstate_t *ms, luaL_Buffer *b, const char *r, size_t rlen,
                         const char *s, const char *e)
{
    lua_State *L = ms->L;
    const char *end = r + rlen;
    while (r < end) {
        const char *pct = memchr(r, '%', (size_t)(end - r));
        if (pct == NULL) {
            luaL_addlstring(b, r, (size_t)(end - r));
            break;
        }
        luaL_addlstring(b, r, (size_t)(pct - r));
        r = pct + 1;
        unsigned char d = r < end ? (unsigned char)*r : '\0';
        if (d == '%') {
            luaL_addchar(b, '%');
        } else if (isdigit(d)) {
            if (d == '0') {
                luaL_addlstring(b, s, (size_t)(e - s));
            } else {
                push_capture(ms, d - '1', s, e);
                luaL_tolstring(L, -1, NULL);
                lua_remove(L, -2);
                luaL_addvalue(b);
            }
        } else {
            luaL_error(L, "invalid use of '%%' in replacement string");
        }
        r++;
    }
}

/* Appends the replacement for the match s..e: from the template, or what
 * the table or function gives (false or nil keeps the match). */
static void add_replacement(mstate_t *ms, luaL_Buffer *b, const char *s, const char *e, int type)
{
    lua_State *L = ms->L;
    if (type == LUA_TSTRING || type == LUA_TNUMBER) {
        size_t rlen = 0;
        const char *r = lua_tolstring(L, 3, &rlen);
        bytes_steps(ms, rlen);
        add_template(ms, b, r, rlen, s, e);
        return;
    }
    charge(ms);
    if (type == LUA_TFUNCTION) {
        lua_pushvalue(L, 3);
        int n = push_captures(ms, s, e, true);
        lua_call(L, n, 1);
    } else {
        push_capture(ms, 0, s, e);
        lua_gettable(L, 3);
    }
    charge(ms);
    if (!lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        luaL_addlstring(b, s, (size_t)(e - s));
    } else if (!lua_isstring(L, -1)) {
        luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    } else {
        luaL_addvalue(b);
    }
}

static int lp_gsub(lua_State *L)
{
    size_t len = 0, plen = 0;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *p = luaL_checklstring(L, 2, &plen);
    int type = lua_type(L, 3);
    lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)len + 1);
    luaL_argexpected(L, type == LUA_TNUMBER || type == LUA_TSTRING || type == LUA_TFUNCTION ||
                            type == LUA_TTABLE,
                     3, "string/function/table");
    lua_settop(L, 3);
    mstate_t ms;
    mstate_init(&ms, L, s, len);
    steps(&ms, plen);
    compiled_t *c = compile(L, p, plen, true);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    const char *at = s, *last = NULL;
    lua_Integer n = 0;
    while (n < max) {
        const char *e = match_at(&ms, at, c);
        if (e != NULL && e != last) {
            n++;
            add_replacement(&ms, &b, at, e, type);
            at = last = e;
        } else if (at < ms.end) {
            luaL_addchar(&b, *at++);
        } else {
            break;
        }
        if (c->anchored)
            break;
    }
    charge(&ms);
    luaL_addlstring(&b, at, (size_t)(ms.end - at));
    luaL_pushresult(&b);
    lua_pushinteger(L, n);
    return 2;
}

void mdm__lpattern_install(lua_State *L, int table, const mdm__lpattern_meter_t *meter)
{
    static const luaL_Reg fns[] = {
        {"find", lp_find}, {"match", lp_match}, {"gmatch", lp_gmatch}, {"gsub", lp_gsub},
    };
    table = lua_absindex(L, table);
    class_maps_init();
    for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
        lua_pushlightuserdata(L, (void *)meter);
        lua_pushcclosure(L, fns[i].func, 1);
        lua_setfield(L, table, fns[i].name);
    }
}
