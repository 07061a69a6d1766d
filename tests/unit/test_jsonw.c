/* Tests of the streaming JSON writer (util/jsonw.c): escapes, control
 * characters, valid and malformed UTF-8, members and numbers; every output
 * must be read back by jansson to the expected value. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/jsonw.h"

/* Writes s (n bytes) as a JSON string and asserts jansson reads want. */
static void check_str(const char *s, size_t n, const char *want)
{
    mdm_buf_t b = MDM_BUF_INIT;
    mdm_jsonw_str(&b, s, n);
    json_error_t e;
    json_t *j = json_loadb(b.data, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    if (j == NULL)
        fail_msg("jansson refuses %.*s: %s", (int)b.len, b.data, e.text);
    assert_true(json_is_string(j));
    assert_int_equal(json_string_length(j), strlen(want));
    assert_memory_equal(json_string_value(j), want, strlen(want));
    json_decref(j);
    mdm_buf_free(&b);
}

static void test_strings(void **state)
{
    (void)state;
    check_str("plain", 5, "plain");
    check_str("", 0, "");
    check_str("q\"b\\s/", 6, "q\"b\\s/");
    check_str("a\nb\tc\rd\x01\x1f", 9, "a\nb\tc\rd\x01\x1f");
    check_str("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\xb1", 14, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\xb1");
    /* Malformed: a lone continuation byte, a truncated sequence at the end,
     * an overlong form, an encoded surrogate, a byte that never starts one. */
    check_str("a\x80z", 3, "a\xef\xbf\xbdz");
    check_str("a\xe2\x82", 3, "a\xef\xbf\xbd\xef\xbf\xbd");
    check_str("\xc0\xaf", 2, "\xef\xbf\xbd\xef\xbf\xbd");
    check_str("\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    check_str("\xff", 1, "\xef\xbf\xbd");
}

static void test_members_and_numbers(void **state)
{
    (void)state;
    mdm_buf_t b = MDM_BUF_INIT;
    bool first = true;
    mdm_buf_putc(&b, '{');
    mdm_jsonw_member_str(&b, &first, "name", "x\"y");
    mdm_jsonw_member_str(&b, &first, "absent", NULL);
    mdm_jsonw_member_int(&b, &first, "big", INT64_MIN);
    mdm_jsonw_key(&b, &first, "real");
    mdm_jsonw_real(&b, 2.0);
    mdm_jsonw_key(&b, &first, "third");
    mdm_jsonw_real(&b, 1.0 / 3.0);
    mdm_jsonw_key(&b, &first, "nan");
    mdm_jsonw_real(&b, NAN);
    mdm_buf_putc(&b, '}');
    json_error_t e;
    json_t *j = json_loadb(b.data, b.len, 0, &e);
    if (j == NULL)
        fail_msg("jansson refuses %.*s: %s", (int)b.len, b.data, e.text);
    assert_int_equal(json_object_size(j), 5);
    assert_string_equal(json_string_value(json_object_get(j, "name")), "x\"y");
    assert_null(json_object_get(j, "absent"));
    assert_true(json_integer_value(json_object_get(j, "big")) == INT64_MIN);
    assert_true(json_is_real(json_object_get(j, "real")));
    assert_true(json_real_value(json_object_get(j, "third")) == 1.0 / 3.0);
    assert_true(json_is_null(json_object_get(j, "nan")));
    json_decref(j);
    mdm_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_members_and_numbers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
