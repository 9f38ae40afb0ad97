/* Test driver (tests/test_nvml_node.py): the library's per-container view of the node agents'
 * snapshot file, printed as the exec path's text, or FALLBACK when the library would run
 * nvidia-smi instead. Includes the library's source to reach its static functions. */
#include "../../nvml/fakenvml.c"

int main(void) {
    struct stat st;
    stat_topology(&st);
    char *text = node_snapshot(&st);
    if (!text) {
        puts("FALLBACK");
        return 3;
    }
    fputs(text, stdout);
    free(text);
    return 0;
}
