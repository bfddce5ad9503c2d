//! Known answers for `tokenize` in the end-to-end tests: the token of every customer e-mail
//! address those tests check, under each test's key, computed outside tributary (so a fault in
//! `TokenKey::tokenize` — another key, digest, encoding or length — fails them, rather than
//! being compared with itself). Each is the README's definition, the lowercase hex of
//! HMAC-SHA256 keyed with the key's UTF-8 bytes over the address's UTF-8 bytes, made with
//! Python's standard library:
//!
//! ```sh
//! python3 -c 'import hashlib, hmac, sys
//! for e in sys.argv[2:]: print(e, hmac.new(sys.argv[1].encode(), e.encode(), hashlib.sha256).hexdigest())' \
//!     scenario-tokenize-key-0123456789 chen.ito.1@example.com dara.lopez.2@example.com …
//! ```
//!
//! The addresses are those `TicketWorld::new` draws for the tests' seeds; a test that checks an
//! address missing here fails, naming it.

// Each test binary that includes this module uses one of the tables.
#![allow(dead_code)]

/// The key of `tests/scenarios.rs` (its `TicketWorld` of seed 11, 40 customers).
pub const SCENARIOS_KEY: &str = "scenario-tokenize-key-0123456789";

/// The key of `tests/cluster_processes.rs` (seed 7, 60 customers).
pub const CLUSTER_KEY: &str = "cluster-test-tokenize-key-0123456789";

/// (e-mail, token under [`SCENARIOS_KEY`]).
pub const SCENARIOS: &[(&str, &str)] = &[
    ("chen.ito.1@example.com", "12d5dbc5ab06554c86300a7343df01e2628f877940d9a8408a333efce6f5af29"),
    ("dara.lopez.2@example.com", "a7b1b2db27d01d5d2a38d781d90175a682ebe55bd786909cc80bc6566b7a1953"),
    ("chen.ito.3@example.com", "ec6d3ce192aad4ea8633e6bb4498d6e30d1a66a9aebdc1242f5ee26efc14e157"),
    ("chen.ito.4@example.com", "12e67091aa5f926d901d306f65773c81ae1f26d77eebe81ff1d2426bdcf45c9a"),
    ("eli.lopez.5@example.com", "23a309f5cfb0ca8599c11720246d1e2d95dd50e020c143259a3a99f4dda29609"),
    ("bo.jones.6@example.com", "7c9686cdf7fe8c8456285caaaaf09761ef559d5b9de73626b014c5f4991923e0"),
    ("fatima.ito.7@example.com", "3fd5aa0efd8e38541e4d0db42efd859c4727ce47371b406eaeae49362b24abae"),
    ("ana.jones.8@example.com", "f8443e21906c17a93ad538242cc5231b18466a3ac023c416d0bee2c691c13faa"),
    ("chen.jones.9@example.com", "8d2cfa12893dfc053a5dfb610991fbbfbfafed47b8995bab2aee86aae2b7a518"),
    ("chen.ito.10@example.com", "f61acf1dec3112ce9e5730b2f08af68eac1c47f93d219ca6b33ea0be42dc8206"),
    ("ana.kowalski.11@example.com", "e87976b166689f9d73f8eb510206c606aad780b2b1af7d2c65d3fbf59d2548f1"),
    ("dara.ito.12@example.com", "0d062e05097492390f423f5f8ecddd776460bfba0e48eae59523b2550ab766aa"),
    ("ana.ito.13@example.com", "073dea23a9171ce3b9523501ae0184de322cdbda22515580114757d93f0c0ca5"),
    ("bo.lopez.14@example.com", "57d14224d589b332170fff807718fb08042f3247e94690b79be811d1f4586fdc"),
    ("bo.musa.15@example.com", "e718121fe37059f232b89fee0cb9e63be034e71370041c632dd380d06661d51a"),
    ("chen.ito.16@example.com", "65cc10b5c19ab89298d2c13a4e2fc004c315f3f57ec2b57c894aa7c9e46ee8ca"),
    ("bo.jones.17@example.com", "65895e834bf64218bb06d1c40823d4be994700a60beadabd4385de2d942a71a6"),
    ("ana.ito.18@example.com", "79af72eae6033467f573f8ccc7229c691572fbe8362714a9047a69219c57404e"),
    ("dara.kowalski.19@example.com", "331c5477ea82c0d50f16e56d028ee2683c11ea3a6f191e9655340cd69e73f4b0"),
    ("bo.lopez.20@example.com", "a26592e19ebe01c6dad188c011172bb1732ce769b9b46daf2d24732ce9948480"),
    ("chen.kowalski.21@example.com", "c1f32bf3a3f62ee3542494fae5ec0aad9becba17170953bc5fd033d4daa6138c"),
    ("chen.jones.22@example.com", "a35aac7f5f132af42ec1b35ccb7a96668624be56f6a5c72ee124dcac2dd78375"),
    ("ana.musa.23@example.com", "315a3ccb13400e28b5fc486d0f20aeb9044e307dc25bb8d63cc531c4f80a84e9"),
    ("fatima.ito.24@example.com", "5e83813534484dbaf9dfb33fa1fa61332a8d41d523cd94705ad571d7dee180c2"),
    ("bo.kowalski.25@example.com", "f8f5246bc778775276f54b6621498139b7c8e390e3537bafdbd7ae8ba347515a"),
    ("dara.kowalski.26@example.com", "29b1ad435348f158574c6999c2a05aef029df28654bbbcfe7db3269c16b3e9cc"),
    ("dara.kowalski.27@example.com", "9029b3d37971ce66a7ff4ce9ad6349215107c6a22e8e6660aea32f3ae89b547b"),
    ("bo.ito.28@example.com", "7d44c4c999393f374a119e5c17efddf85cd3f882412921b65e02c56bcd701f6f"),
    ("eli.ito.29@example.com", "6bc318329a89dc188a34eaac7a8b87288cdb529b473337c8475544d445055819"),
    ("bo.lopez.30@example.com", "67cf298179596d5636d67bbc858422aa7a3468929855574739b7808f7de231ff"),
    ("ana.lopez.31@example.com", "55cb2a9c6c0a32ef7d336f09922df8ac2128bdd7ceaa945b0d4423db8a860079"),
    ("dara.musa.32@example.com", "1f406cd7baefdbf04ddc4574edc5d24993446a44c80649b1d8db1028e16b7ca5"),
    ("ana.kowalski.33@example.com", "ae295b48c1a9c3c7e507799ba91903ff31e973ed1abaebdd5cea92fbf91b1516"),
    ("dara.ito.34@example.com", "5200c15de11106818be12ce3f2f4a336cb56c912cbe9412fe4764f50c3c0547e"),
    ("fatima.musa.35@example.com", "83009a0108f009b8a0dc8c74957a878b61028769139666d1e264f1eb395a3e44"),
    ("fatima.ito.36@example.com", "964872247d9972f493dbd5e7f48a94cf9a90b66a6146520b5eec13366fd96ba8"),
    ("fatima.jones.37@example.com", "2f4ac317225142ac92cfa8a842f39a50629a91e991e20da646532c53c8b2f624"),
    ("eli.jones.38@example.com", "0a19d2091c3a57a0b379849e6d37082639e2c725ec79142547d8b853c8ebff23"),
    ("fatima.ito.39@example.com", "6f396e481262e950e34a61e9af09dbd780b6467255fd9f13c75dc9dd9e5d0205"),
    ("ana.jones.40@example.com", "52adc96259d6939688586e1f27a33640dbdec622ad90d36983f5546f06d9f428"),
];

/// (e-mail, token under [`CLUSTER_KEY`]).
pub const CLUSTER: &[(&str, &str)] = &[
    ("bo.lopez.1@example.com", "072403ebb531cd47abd8c74e681a04486b20afcf8f83589d009998d3c7d63a55"),
    ("bo.kowalski.2@example.com", "ca320e99529dbbd6baefc50ab4678d94f25efbac21fdbcb9e00080432b43b74b"),
    ("dara.musa.3@example.com", "185d25f288a11dd97875fbe243c06533cd26f8ced94c0438d71e016d6dd53458"),
    ("dara.jones.4@example.com", "fa9d0c8b5719e19f9f6a9c35e0650e9d1462f888af01712b3a07fd600480e5bf"),
    ("bo.kowalski.5@example.com", "6e6a4f984d328283add4be617ddec857784ca7585bfda6c785341501c6e8bbaf"),
    ("bo.kowalski.6@example.com", "2872547af2e44d19e4501505b4d7c75c0e2501be4ba197e19fcd87b40ae64081"),
    ("chen.kowalski.7@example.com", "d071d2e60ed9e54c539bf6ecd7695419fecfc534d559fed9236dff7c9fc497e8"),
    ("ana.lopez.8@example.com", "3dbf0735f67ec42d16ea5aa81e0a0d2f425d213ff9df97eff8a9c7d31be58311"),
    ("ana.lopez.9@example.com", "33b6fed4a940d13c70cd1df6a4bcce1ef4e4a8655d8d5e652b0b7d11549d657c"),
    ("fatima.lopez.10@example.com", "7a282c188660706eec181eacaadda2809f9c9e23c4b1400a4bb176865db0905a"),
    ("eli.ito.11@example.com", "1270ef8c2902c4f40f82b46a5d088699eacf4d9ab9a7dd75ee9f0e01a36965e9"),
    ("dara.lopez.12@example.com", "0f3d7696d7193e97b97b1207282e0d58bd7fe078064d6845cc17c6979b9d0a8c"),
    ("ana.jones.13@example.com", "b31e7a0fe180a825454eb350afb3729828321bbb08851c0fea385bf6c99385c8"),
    ("fatima.jones.14@example.com", "be215facc2dbd77aec4cad5a9d53a2b768226eb808fe2abe65cd3af1a8efc628"),
    ("dara.kowalski.15@example.com", "5026ef4a6a84e0fbeb16b0e246ab9b8a61a0373c65adee7c844e9b4febc88313"),
    ("ana.musa.16@example.com", "625c098ae18a5bd959b54febb0a81cf08ceba401f89ee151b56df98e64287578"),
    ("dara.kowalski.17@example.com", "043b88642f3f6a28f16663343e8c55c3c30f837e4b234b6c7934704a1dc3778f"),
    ("fatima.ito.18@example.com", "9d9a6c0dd116bf2dbeff726247851e768534ad3cec3330dec16354e2429e66bf"),
    ("ana.ito.19@example.com", "96db8e6b180652ca3afc00c9e82aac71ad3353429e340caba7d4ea899356b433"),
    ("bo.musa.20@example.com", "2d019652db2b53592b0e748bd1fc46537341f1621220e85c1dcc4848ea257a12"),
    ("eli.kowalski.21@example.com", "49629dd56cc05eb2c2e4050923ed2fe19032057c6a39e5ffaf613750306e5cf9"),
    ("bo.kowalski.22@example.com", "6bba7ea32a3241c7f5dafbc3b694113868de4165c15d82aa1ae67b94b2a0d5c5"),
    ("chen.lopez.23@example.com", "80f70ad4c26759d34709b5050427ad4d2573d6220bc73116f542ad88426738c1"),
    ("chen.lopez.24@example.com", "93f06babb130c7c468148ef64f357dff44fdf7e932e15657a76ef3b634463845"),
    ("dara.ito.25@example.com", "8e0b98ea253b57fa1869a67f3ff19116f293398af285670767fdb62a50222741"),
    ("chen.jones.26@example.com", "551b855870b68ab7b86410c396869dd4210ced579706b62dd7d21ead1098fff7"),
    ("fatima.musa.27@example.com", "7165ca456173e5ab4db565b2ae47fefc7d331b25632026c517a248796c25138f"),
    ("fatima.jones.28@example.com", "83291a56c1455e2ee46ace9c7584f581dde1bb1600dec5f23078e7803a964c24"),
    ("fatima.musa.29@example.com", "2a2a901366105c8917ba308eec0e217fc01f6b11735ab08e232a43749ddf125b"),
    ("dara.kowalski.30@example.com", "fb462be66a0592b2ab9f17a16cbc77e9ba0a47cd216eb56597ca85917969ff9a"),
    ("ana.lopez.31@example.com", "1afb8bc0f7a78823dff39294cf81c6e685eba5798809a1916d0adac5e23e6676"),
    ("chen.lopez.32@example.com", "35ae2e3c9c5341c5c47d40d63a985dd81a9d5d8e2d32598f554b773be4666516"),
    ("eli.kowalski.33@example.com", "661098f1cc8ac495d056bea3b1e6fbc91a5b006c4630d34faecf1660e54c2812"),
    ("eli.ito.34@example.com", "1d86ce65b50886292eb3a8b0a1b86efa7cb9c18a07668698bf141dbc3aac664a"),
    ("ana.lopez.35@example.com", "c6cd3f745ae7a764ae5197606079068af62efdd0c75a160798b503808e1a709b"),
    ("eli.lopez.36@example.com", "e858ca9d250c1dfc893aa5fb86c63467b29daccba8ba5f97457a9d2e5c2ac94e"),
    ("dara.musa.37@example.com", "6c8e8e5f2aa20993b3e802ea1d6845254091d602a869bbf545c73fc931e64def"),
    ("ana.jones.38@example.com", "41d2f6628f724cdf994880e0679bdfb3a36a240e3d855395857c1632ff2dece8"),
    ("eli.musa.39@example.com", "d328024f128bce219d24bef80945266b8b34efcd1bf5fd60771f5d4ef634e52b"),
    ("dara.kowalski.40@example.com", "fcc8c2a397d38437993326b469587ea29ae0655be23dac01fe4a568d834e739e"),
    ("chen.ito.41@example.com", "21fe75d403de8448444d032a64aedb78c8531436e1e7b346021aa16875d9e191"),
    ("ana.jones.42@example.com", "5ba9e48689a6ea393512c629398a9ceda4c46c6293326cd4e5ff92ae930c2e34"),
    ("eli.musa.43@example.com", "e47cfe88ddcf666c2ec0a8b821e799bfa5d11c13a8821551351a6d08830a4a89"),
    ("dara.ito.44@example.com", "993d8ea05482e814aa7f6a11ef53ddcea1b013755d2a673a00ae212d159d2092"),
    ("fatima.lopez.45@example.com", "a93720c78a5b8f7fcf0b2d8173bbfc79fd00227a5027e84e43685322b04333c1"),
    ("fatima.musa.46@example.com", "a36b7e3809ac446e24c60503705b5b22da8ddd1f3c494d917f2d7b7c5f31ad33"),
    ("ana.lopez.47@example.com", "96a61a5bdfb3b005a1fe99abf2702b59612feb44f486d8259b43e8acee699d32"),
    ("chen.jones.48@example.com", "97cdc589f21b2923e54dddeacd6d33c33fb5174883078d5f96915d726208eeb9"),
    ("bo.lopez.49@example.com", "3b4aa1dc4aaad51ca3ee2dec6fa3249224599920d00129204ffd63989d0d44b0"),
    ("eli.musa.50@example.com", "0c50ee34a1e353bd0b41c0eecc3b4efd8ed071f5b5e253c9f3c00e75bffef8c7"),
    ("dara.lopez.51@example.com", "1c13803598a9168123ccbd259b08d02f27744ab070f6ea57867b1d83cf886259"),
    ("ana.musa.52@example.com", "9d37951282c3e0c78f65a97257dc28e35c89bb6e4ddfecfeccad315d59ee42e8"),
    ("eli.musa.53@example.com", "1e1ad2b45a2b81c8ec5078de96f08fccf98ab1c2e87223b75437b8825d3b9921"),
    ("fatima.lopez.54@example.com", "10f10a943881ac5090f3c82d292f81a2399625af43269fc286cc70e844ecdd27"),
    ("dara.musa.55@example.com", "99f645676a6a99e24680e6628f1e90112f2120139ff028ef9563443323c8e1c9"),
    ("chen.kowalski.56@example.com", "de58a3edc97c54e979685ade8a6bfeaf26418c4da266f9b3301a4e8243e8a942"),
    ("fatima.kowalski.57@example.com", "5192604300502b33636710f4b5ac05f08dbe4777ef69c4d36018a1f2c13585b3"),
    ("bo.kowalski.58@example.com", "ad8d9cf4767039f980a9c9ed46dac0f4cbc551bb0c31a92512462e48f6ac8105"),
    ("fatima.kowalski.59@example.com", "346a7d6007d5f7bec9ec74cf4c029dcf15d049222f61cf96505851631d0a47f9"),
    ("eli.ito.60@example.com", "be5d5213bbdb57af518314dfecaa902b8cb20323ba13e18c5c49934e4c59593f"),
];

/// The token of `email` in `table`.
pub fn token(table: &[(&str, &'static str)], email: &str) -> &'static str {
    match table.iter().find(|(e, _)| *e == email) {
        Some((_, token)) => token,
        None => panic!("no known token for {email:?}: add it to tests/known_tokens/mod.rs"),
    }
}
