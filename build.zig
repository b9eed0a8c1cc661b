//! Builds aicfn: one static library (every folder except cli/main.c), the `aicfn`
//! binary, the example handlers, the unit and concurrency tests, and the benches.
//!
//! Sources are discovered by folder, so adding a file never needs an edit here:
//!   common/ snapshots/ loader/ worker/ gateway/ cli/   -> libaicfn.a (cli/main.c -> aicfn)
//!   examples/NAME/*.c (+ *.cu with CUDA)               -> zig-out/lib/handlers/NAME.so
//!   tests/handlers/NAME.c                              -> zig-out/lib/handlers/test_NAME.so
//!   tests/unit/test_*.c, tests/concurrency/test_*.c    -> zig-out/bin/tests/...
//!   bench/NAME/*.c                                     -> `zig build bench-NAME` (`benches`: all, not run)
//!
//! Options: -Dcuda=auto|on|off, -Dsanitize=none|address,undefined|thread.
const std = @import("std");

const lib_folders = [_][]const u8{ "common", "snapshots", "loader", "worker", "gateway", "cli" };
// libmicrohttpd is not linked: the HTTP front loads it when it starts (gateway/mhd.h).
const system_libs = [_][]const u8{ "nng", "msgpackc", "zstd", "sqlite3", "yaml", "jansson", "xxhash", "sodium", "pthread", "dl", "m" };
const cuda_root = "/usr/local/cuda";

const Sanitize = enum { none, asan_ubsan, thread };

const Ctx = struct {
    b: *std.Build,
    target: std.Build.ResolvedTarget,
    optimize: std.builtin.OptimizeMode,
    sanitize: Sanitize,
    cuda: bool,
    cflags: []const []const u8,
    /// Under ASan: a generated C file that puts __asan_init in .preinit_array (see asanPreinit).
    asan_preinit: ?std.Build.LazyPath,
};

pub fn build(b: *std.Build) void {
    const target = b.standardTargetOptions(.{});
    const optimize = b.standardOptimizeOption(.{});
    const cuda_opt = b.option([]const u8, "cuda", "Build the CUDA device code: auto (default), on, off") orelse "auto";
    const san_opt = b.option([]const u8, "sanitize", "none (default), address,undefined, or thread") orelse "none";

    const sanitize: Sanitize = if (std.mem.eql(u8, san_opt, "none"))
        .none
    else if (std.mem.eql(u8, san_opt, "address,undefined") or std.mem.eql(u8, san_opt, "undefined,address"))
        .asan_ubsan
    else if (std.mem.eql(u8, san_opt, "thread"))
        .thread
    else
        std.debug.panic("-Dsanitize must be none, address,undefined or thread (got '{s}')", .{san_opt});

    const cuda = resolveCuda(b, cuda_opt);

    var flags: std.ArrayList([]const u8) = .empty;
    flags.appendSlice(b.allocator, &.{ "-std=c17", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-fno-omit-frame-pointer", "-g" }) catch @panic("OOM");
    if (cuda) flags.appendSlice(b.allocator, &.{ "-DAICFN_HAVE_CUDA=1", "-I" ++ cuda_root ++ "/include" }) catch @panic("OOM");
    switch (sanitize) {
        .none => {},
        .asan_ubsan => flags.appendSlice(b.allocator, &.{ "-fsanitize=address", "-DAICFN_ASAN=1" }) catch @panic("OOM"),
        .thread => flags.append(b.allocator, "-DAICFN_TSAN=1") catch @panic("OOM"),
    }

    const ctx: Ctx = .{
        .b = b,
        .target = target,
        .optimize = optimize,
        .sanitize = sanitize,
        .cuda = cuda,
        .cflags = flags.items,
        .asan_preinit = if (sanitize == .asan_ubsan) asanPreinit(b) else null,
    };

    // The one static library.
    const lib = b.addLibrary(.{ .name = "aicfn", .linkage = .static, .root_module = newModule(&ctx) });
    for (lib_folders) |folder| {
        const files = listFiles(b, folder, ".c", false);
        var kept: std.ArrayList([]const u8) = .empty;
        for (files) |f| {
            if (std.mem.eql(u8, f, "cli/main.c")) continue;
            if (!cuda and std.mem.endsWith(u8, f, "_cuda.c")) continue;
            kept.append(b.allocator, f) catch @panic("OOM");
        }
        lib.root_module.addCSourceFiles(.{ .files = kept.items, .flags = ctx.cflags });
    }
    b.installArtifact(lib);

    // The aicfn binary.
    const exe = b.addExecutable(.{ .name = "aicfn", .root_module = newModule(&ctx) });
    exe.root_module.addCSourceFiles(.{ .files = &.{"cli/main.c"}, .flags = ctx.cflags });
    linkAll(&ctx, exe, lib);
    b.installArtifact(exe);

    // Handlers: examples and test handlers, as shared libraries built against include/ only.
    const handlers_step = b.step("handlers", "Build the example and test handler libraries");
    for (listDirs(b, "examples")) |name| {
        const dir = b.fmt("examples/{s}", .{name});
        const c_files = listFiles(b, dir, ".c", false);
        if (c_files.len == 0) continue;
        const so = addHandler(&ctx, name, c_files, listFiles(b, dir, ".cu", false));
        handlers_step.dependOn(&so.step);
        b.getInstallStep().dependOn(&so.step);
    }
    for (listFiles(b, "tests/handlers", ".c", false)) |file| {
        const stem = std.fs.path.stem(file);
        const so = addHandler(&ctx, b.fmt("test_{s}", .{stem}), &.{file}, &.{});
        handlers_step.dependOn(&so.step);
        b.getInstallStep().dependOn(&so.step);
    }

    // Tests: every tests/unit/test_*.c and tests/concurrency/test_*.c is one cmocka binary.
    const test_step = b.step("test", "Build and run the unit and concurrency tests");
    const tests_build = b.step("tests", "Build the unit and concurrency test binaries only");
    const conc_build = b.step("tests-concurrency", "Build the concurrency test binaries only (the TSan suite)");
    for ([_][]const u8{ "tests/unit", "tests/concurrency" }) |dir| {
        for (listFiles(b, dir, ".c", false)) |file| {
            const stem = std.fs.path.stem(file);
            if (!std.mem.startsWith(u8, stem, "test_")) continue;
            const t = b.addExecutable(.{ .name = stem, .root_module = newModule(&ctx) });
            t.root_module.addCSourceFiles(.{ .files = &.{file}, .flags = ctx.cflags });
            t.root_module.addIncludePath(b.path("tests/unit"));
            linkAll(&ctx, t, lib);
            t.root_module.linkSystemLibrary("cmocka", .{});
            const sub = std.fs.path.basename(dir);
            const inst = b.addInstallArtifact(t, .{ .dest_dir = .{ .override = .{ .custom = b.fmt("bin/tests/{s}", .{sub}) } } });
            tests_build.dependOn(&inst.step);
            if (std.mem.eql(u8, sub, "concurrency")) conc_build.dependOn(&inst.step);
            const run = b.addRunArtifact(t);
            run.setCwd(b.path("."));
            run.step.dependOn(handlers_step);
            test_step.dependOn(&run.step);
        }
    }

    // Benchmarks: bench/NAME/*.c -> `zig build bench-NAME`, extra args after `--`;
    // `zig build benches` installs them all without running (to run elsewhere).
    const benches = b.step("benches", "Build and install every benchmark without running it");
    for (listDirs(b, "bench")) |name| {
        const dir = b.fmt("bench/{s}", .{name});
        const c_files = listFiles(b, dir, ".c", false);
        if (c_files.len == 0) continue;
        const bx = b.addExecutable(.{ .name = b.fmt("bench-{s}", .{name}), .root_module = newModule(&ctx) });
        bx.root_module.addCSourceFiles(.{ .files = c_files, .flags = ctx.cflags });
        linkAll(&ctx, bx, lib);
        const inst = b.addInstallArtifact(bx, .{});
        benches.dependOn(&inst.step);
        const run = b.addRunArtifact(bx);
        run.setCwd(b.path("."));
        run.step.dependOn(&inst.step);
        run.step.dependOn(b.getInstallStep());
        run.addPassthruArgs();
        const step = b.step(b.fmt("bench-{s}", .{name}), b.fmt("Run the {s} benchmark (JSON lines)", .{name}));
        step.dependOn(&run.step);
    }
}

fn newModule(ctx: *const Ctx) *std.Build.Module {
    const m = ctx.b.createModule(.{
        .target = ctx.target,
        .optimize = ctx.optimize,
        .link_libc = true,
        .omit_frame_pointer = false,
        .sanitize_c = if (ctx.sanitize == .asan_ubsan) .full else .off,
        .sanitize_thread = ctx.sanitize == .thread,
    });
    m.addIncludePath(ctx.b.path("."));
    m.addIncludePath(ctx.b.path("include"));
    return m;
}

/// Links the static library, the system libraries, CUDA and the ASan runtime into an executable.
fn linkAll(ctx: *const Ctx, c: *std.Build.Step.Compile, lib: *std.Build.Step.Compile) void {
    const m = c.root_module;
    // Zig ships no ASan runtime; gcc's libasan (same instrumentation ABI) serves. It
    // must come first in the list of needed libraries, and the executable must start it
    // from .preinit_array, as gcc's driver does (see asanPreinit).
    if (ctx.sanitize == .asan_ubsan) {
        m.addObjectFile(.{ .cwd_relative = asanRuntime(ctx.b) });
        m.addCSourceFile(.{ .file = ctx.asan_preinit.?, .flags = &.{ "-std=c17", "-fno-sanitize=all" } });
    }
    m.linkLibrary(lib);
    for (system_libs) |name| m.linkSystemLibrary(name, .{});
    if (ctx.cuda) {
        m.addObjectFile(.{ .cwd_relative = cuda_root ++ "/lib64/libcudart_static.a" });
        m.linkSystemLibrary("rt", .{});
    }
}

fn addHandler(ctx: *const Ctx, name: []const u8, c_files: []const []const u8, cu_files: []const []const u8) *std.Build.Step.InstallArtifact {
    const b = ctx.b;
    const so = b.addLibrary(.{ .name = name, .linkage = .dynamic, .root_module = newModule(ctx) });
    // A shared library built with TSan would carry a second copy of the TSan runtime,
    // which aborts at dlopen ("memory layout is incompatible"): handlers stay uninstrumented.
    so.root_module.sanitize_thread = false;
    so.root_module.addCSourceFiles(.{ .files = c_files, .flags = ctx.cflags });
    so.root_module.linkSystemLibrary("m", .{});
    so.root_module.linkSystemLibrary("pthread", .{});
    if (ctx.cuda and cu_files.len > 0) {
        for (cu_files) |cu| {
            const nvcc = b.addSystemCommand(&.{ cuda_root ++ "/bin/nvcc", "-c", "-O2", "-Xcompiler", "-fPIC", "-I", "include" });
            nvcc.setCwd(b.path("."));
            nvcc.addArg("-o");
            const obj = nvcc.addOutputFileArg(b.fmt("{s}.o", .{std.fs.path.stem(cu)}));
            nvcc.addFileArg(b.path(cu));
            so.root_module.addObjectFile(obj);
        }
        so.root_module.addCMacro("AICFN_HANDLER_CUDA", "1");
        // nvcc's host stubs are C++ (static-init guards, EH personality): the handler
        // needs the C++ runtime, else dlopen fails on __gxx_personality_v0.
        so.root_module.addObjectFile(.{ .cwd_relative = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6" });
        so.root_module.addObjectFile(.{ .cwd_relative = cuda_root ++ "/lib64/libcudart_static.a" });
        so.root_module.linkSystemLibrary("rt", .{});
        so.root_module.linkSystemLibrary("dl", .{});
    }
    if (ctx.sanitize == .asan_ubsan) so.root_module.addObjectFile(.{ .cwd_relative = asanRuntime(b) });
    return b.addInstallArtifact(so, .{ .dest_dir = .{ .override = .{ .custom = "lib/handlers" } }, .dest_sub_path = b.fmt("{s}.so", .{name}) });
}

/// The executable's .preinit_array entry that starts the ASan runtime before any shared
/// library constructor runs: what gcc's driver links in as libasan_preinit.o, and what
/// Zig (linking libasan.so as a plain object) leaves out. Without it ASan starts lazily
/// on the first intercepted call, which can be a malloc inside another library's
/// constructor: libp11-kit's (via microhttpd -> gnutls, when microhttpd was linked; it is
/// loaded at run time now, gateway/mhd.h, but any linked library may do the same) calls newlocale(), whose malloc
/// runs AsanInitInternal while glibc holds __libc_setlocale_lock for writing; the
/// runtime's dlsym() -> dlerror() -> dcgettext() then takes and "releases" that lock
/// again, so newlocale's own unlock underflows the rwlock's reader count, and the
/// freelocale() in libp11-kit's destructor waits for it forever at exit.
fn asanPreinit(b: *std.Build) std.Build.LazyPath {
    const wf = b.addWriteFiles();
    return wf.add("asan_preinit.c",
        \\/* Generated by build.zig: start the ASan runtime before shared library constructors. */
        \\extern void __asan_init(void);
        \\__attribute__((section(".preinit_array"), used)) static void (*aicfn_asan_preinit)(void) = __asan_init;
        \\
    );
}

fn asanRuntime(b: *std.Build) []const u8 {
    const candidates = [_][]const u8{ "/usr/lib/x86_64-linux-gnu/libasan.so.8", "/usr/lib/x86_64-linux-gnu/libasan.so.6" };
    for (candidates) |p| {
        b.dependOnFileContents(.{ .cwd_relative = p });
        std.Io.Dir.accessAbsolute(b.graph.io, p, .{}) catch continue;
        return p;
    }
    std.debug.panic("-Dsanitize=address,undefined needs gcc's libasan (Debian package libasan8); run scripts/bootstrap.sh", .{});
}

fn resolveCuda(b: *std.Build, opt: []const u8) bool {
    const nvcc = cuda_root ++ "/bin/nvcc";
    const cudart = cuda_root ++ "/lib64/libcudart_static.a";
    const present = blk: {
        std.Io.Dir.accessAbsolute(b.graph.io, nvcc, .{}) catch break :blk false;
        std.Io.Dir.accessAbsolute(b.graph.io, cudart, .{}) catch break :blk false;
        break :blk true;
    };
    b.dependOnFileMetadata(.{ .cwd_relative = cudart });
    if (std.mem.eql(u8, opt, "off")) return false;
    if (std.mem.eql(u8, opt, "on")) {
        if (!present) std.debug.panic("-Dcuda=on needs {s} and {s}", .{ nvcc, cudart });
        return true;
    }
    if (std.mem.eql(u8, opt, "auto")) return present;
    std.debug.panic("-Dcuda must be auto, on or off (got '{s}')", .{opt});
}

/// Files with the given suffix directly inside `dir` (relative to the build root), sorted.
fn listFiles(b: *std.Build, dir: []const u8, suffix: []const u8, recurse: bool) []const []const u8 {
    _ = recurse;
    const io = b.graph.io;
    var out: std.ArrayList([]const u8) = .empty;
    var d = b.root.openDir(io, dir, .{ .iterate = true }) catch return &.{};
    defer d.close(io);
    b.dependOnDirectoryMetadata(b.path(dir));
    var it = d.iterate();
    while (it.next(io) catch null) |entry| {
        if (entry.kind != .file) continue;
        if (!std.mem.endsWith(u8, entry.name, suffix)) continue;
        out.append(b.allocator, b.fmt("{s}/{s}", .{ dir, entry.name })) catch @panic("OOM");
    }
    std.mem.sort([]const u8, out.items, {}, lessThan);
    return out.items;
}

/// Sub-folders directly inside `dir`, sorted.
fn listDirs(b: *std.Build, dir: []const u8) []const []const u8 {
    const io = b.graph.io;
    var out: std.ArrayList([]const u8) = .empty;
    var d = b.root.openDir(io, dir, .{ .iterate = true }) catch return &.{};
    defer d.close(io);
    b.dependOnDirectoryMetadata(b.path(dir));
    var it = d.iterate();
    while (it.next(io) catch null) |entry| {
        if (entry.kind != .directory) continue;
        out.append(b.allocator, b.dupe(entry.name)) catch @panic("OOM");
    }
    std.mem.sort([]const u8, out.items, {}, lessThan);
    return out.items;
}

fn lessThan(_: void, a: []const u8, c: []const u8) bool {
    return std.mem.order(u8, a, c) == .lt;
}
