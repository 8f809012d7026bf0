// SPDX-License-Identifier: GPL-2.0
/* Test helper (user space, not a BPF program): load an object with libbpf, optionally
 * relocating CO-RE against a custom BTF file (btf_custom_path), and print "name tag" per
 * program. It is how the tests compare our relocation with libbpf's for BTF they write. */
#include <stdio.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

int main(int argc, char **argv)
{
	struct bpf_program *prog;
	struct bpf_object *obj;

	if (argc < 2) {
		fprintf(stderr, "usage: %s OBJ [BTF]\n", argv[0]);
		return 2;
	}
	LIBBPF_OPTS(bpf_object_open_opts, opts, .btf_custom_path = argc > 2 ? argv[2] : NULL);
	obj = bpf_object__open_file(argv[1], &opts);
	if (!obj)
		return 1;
	if (bpf_object__load(obj))
		return 1;
	bpf_object__for_each_program(prog, obj) {
		struct bpf_prog_info info = {};
		__u32 len = sizeof(info);

		if (bpf_obj_get_info_by_fd(bpf_program__fd(prog), &info, &len))
			return 1;
		printf("%s ", bpf_program__name(prog));
		for (int i = 0; i < 8; i++)
			printf("%02x", info.tag[i]);
		printf("\n");
	}
	bpf_object__close(obj);
	return 0;
}
