// A standard W3C WoT consumer (node-wot) using only a Thing Description's HTTP forms.
//
//   node consume.mjs <TD URL> <bearer token> <property> <action> <action input as JSON>
//
// Prints one JSON line per step: {"read": v}, {"observing": true}, {"observed": v},
// {"invoked": output}. Exits 1 with the error on stderr if a step fails.
import core from "@node-wot/core";
import http from "@node-wot/binding-http";

const { Servient } = core;
const { HttpClientFactory } = http;

const [tdUrl, token, property, action, input] = process.argv.slice(2);
const say = (doc) => process.stdout.write(JSON.stringify(doc) + "\n");

const servient = new Servient();
servient.addClientFactory(new HttpClientFactory(null));
const td = await (await fetch(tdUrl)).json();
servient.addCredentials({ [td.id]: { token } });
const WoT = await servient.start();
try {
    const thing = await WoT.consume(td);
    // the value printed is the one a change is observed against (a second read could
    // differ from it, and a random walk could come back to the first one)
    const first = await (await thing.readProperty(property)).value();
    say({ read: first });
    const changed = new Promise((resolve, reject) => {
        thing
            .observeProperty(property, async (data) => {
                const value = await data.value();
                if (value !== first) resolve(value);
            }, reject)
            .then(() => say({ observing: true }), reject);
    });
    say({ observed: await changed });
    const output = await thing.invokeAction(action, JSON.parse(input));
    say({ invoked: await output.value() });
} catch (e) {
    process.stderr.write(String(e && e.stack ? e.stack : e) + "\n");
    process.exit(1);
}
await servient.shutdown();
process.exit(0);
