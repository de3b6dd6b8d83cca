// Runs a MicroPython script with the SAFEthing firmware library under the real
// MicroPython VM (WebAssembly port, npm @micropython/micropython-webassembly-pyscript).
//
//   node run.mjs <library dir> <script.py> [input.json]
//
// The library dir holds the `safething` package, as .py sources or as the .mpy
// files mpy-cross made for the board (bytecode .mpy runs on any port). It is
// copied to /lib/safething in MicroPython's in-memory file system; the input
// file becomes /input.json. The script's output goes to stdout; a Python
// exception prints its traceback on stderr and exits 1.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath, pathToFileURL } from "node:url";

const [libDir, script, input] = process.argv.slice(2);
if (!libDir || !script) {
    console.error("usage: node run.mjs <library dir> <script.py> [input.json]");
    process.exit(2);
}
// The npm package is installed in firmware/node_modules; resolve it from there.
const here = path.dirname(fileURLToPath(import.meta.url));
const firmware = process.env.SAFETHING_FIRMWARE || path.resolve(here, "../../../firmware");
const require = createRequire(path.join(firmware, "package.json"));
const entry = require.resolve("@micropython/micropython-webassembly-pyscript");
const { loadMicroPython } = await import(pathToFileURL(entry).href);

const mp = await loadMicroPython({
    heapsize: 2 * 1024 * 1024,
    stdout: (line) => process.stdout.write(line + "\n"),
    stderr: (line) => process.stderr.write(line + "\n"),
});
for (const dir of ["/lib", "/lib/safething"]) {
    try {
        mp.FS.mkdir(dir);
    } catch {
        // exists
    }
}
const pkg = path.join(libDir, "safething");
for (const name of fs.readdirSync(pkg)) {
    if (name.endsWith(".py") || name.endsWith(".mpy")) {
        mp.FS.writeFile("/lib/safething/" + name, fs.readFileSync(path.join(pkg, name)));
    }
}
// MicroPython's cryptolib (AES) is missing from the WebAssembly build: a stand-in
// written in Python (tests only; the boards have it in C).
const shim = path.join(here, "cryptolib.py");
if (fs.existsSync(shim)) {
    mp.FS.writeFile("/lib/cryptolib.py", fs.readFileSync(shim));
}
if (input) {
    mp.FS.writeFile("/input.json", fs.readFileSync(input));
}
try {
    mp.runPython(fs.readFileSync(script, "utf8"));
} catch (error) {
    if (error && error.name === "PythonError") {
        process.stderr.write(String(error.message) + "\n");
        process.exit(1);
    }
    process.stderr.write(String(error && error.stack ? error.stack.split("\n")[0] : error) + "\n");
    process.exit(1);
}
