// The JavaScript client example from the Node "Mennekes Amtron RPC Server" README,
// unchanged except that the port comes from RPC_PORT (the test server's ephemeral port).
import jayson from 'jayson/promise/index.js';

const client = jayson.Client.http({
  port: Number(process.env.RPC_PORT),
  hostname: 'localhost'
});

// Get current status
const status = await client.request('getStatus', {});
console.log(status.result.data);

// Start charging with 10A
await client.request('startCharging', { current: 10 });

// Wait 5 seconds, then increase to 16A
await new Promise(resolve => setTimeout(resolve, 5000));
await client.request('setChargingCurrent', { ampere: 16 });

// Get current power
const power = await client.request('getChargingPower', {});
console.log(`Charging power: ${power.result.data} kW`);

// Stop charging
await client.request('stopCharging', {});
